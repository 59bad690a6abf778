package mgmt

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Broker is what the management API and the Prometheus collector need from the broker core. The
// core does not import mgmt's HTTP code: the wiring adapts the core to this interface (dependency
// inversion), so the API never fakes an AMQP connection.
//
// Lists return snapshots; they are called per request or per scrape, never per message, and must
// not block the publish path (read counters that the hot path keeps as atomics). Overview and
// VHosts are called on most requests (node name, vhost existence): keep them cheap, with totals
// kept as counters rather than summed over all queues per call. Errors returned
// by the mutating methods should be *Error values (see NotFound, PreconditionFailed, ...) so
// the API answers with RabbitMQ's status codes; any other error becomes a 500.
type Broker interface {
	// Overview is the node-wide picture: identity, listeners, totals, counters, resources.
	Overview() Overview
	// VHosts lists the configured virtual hosts with their message totals and limits.
	VHosts() []VHostInfo
	// Queues lists the queues of vhost, or of all vhosts when vhost is "".
	Queues(vhost string) []QueueInfo
	// Queue returns one queue. It exists beside Queues because monitoring tools (KEDA's scaler,
	// dashboards) poll single queues often and a broker may hold 100,000 of them.
	Queue(vhost, name string) (QueueInfo, bool)
	// Exchanges lists the exchanges of vhost, or of all vhosts when vhost is "", the default
	// exchange ("") and the amq.* ones included.
	Exchanges(vhost string) []ExchangeInfo
	// Bindings lists the bindings of vhost (all when ""), the default exchange's implicit
	// bindings to every queue included, as RabbitMQ lists them.
	Bindings(vhost string) []BindingInfo
	// Connections lists the client connections past connection.open.
	Connections() []ConnectionInfo
	// Channels lists the open channels of all connections.
	Channels() []ChannelInfo
	// Consumers lists the consumers of all queues.
	Consumers() []ConsumerInfo

	// Users, Permissions and Policies are the configuration's (config.yaml); read-only here.
	Users() []UserInfo
	Permissions() []PermissionInfo
	Policies() []PolicyInfo
	// Authenticate checks a password and returns the user's tags. peer is the HTTP client's
	// address: the configuration's loopback_users (guest by default) may only log in from a
	// loopback address, over HTTP as over AMQP, as in RabbitMQ. It is the zero Addr when unknown.
	Authenticate(user, password string, peer netip.Addr) (tags []string, ok bool)

	// DeclareQueue declares a queue as queue.declare would; created reports whether it is new
	// (201) or already existed with equivalent properties (204).
	DeclareQueue(vhost, name string, opts QueueOptions) (created bool, err error)
	// DeleteQueue deletes a queue, refusing with PreconditionFailed when ifUnused and it has
	// consumers or ifEmpty and it has messages.
	DeleteQueue(vhost, name string, ifUnused, ifEmpty bool) error
	// PurgeQueue removes the ready messages of a queue and returns how many.
	PurgeQueue(vhost, name string) (int, error)
	// GetMessages takes up to count messages from the head of a queue as basic.get would, then
	// settles them as mode says.
	GetMessages(vhost, queue string, count int, mode AckMode) ([]Message, error)
	// DeclareExchange declares an exchange as exchange.declare would.
	DeclareExchange(vhost, name string, opts ExchangeOptions) (created bool, err error)
	// DeleteExchange deletes an exchange, refusing with PreconditionFailed when ifUnused and it is
	// the source of a binding.
	DeleteExchange(vhost, name string, ifUnused bool) error
	// Bind and Unbind add and remove a binding (queue.bind / exchange.bind and their unbinds).
	// Unbinding a binding that does not exist is NotFound.
	Bind(b BindingInfo) error
	Unbind(b BindingInfo) error
	// Publish routes one message through an exchange as basic.publish would, and reports
	// whether at least one queue received it.
	Publish(vhost, exchange string, msg Publishing) (routed bool, err error)
	// CloseConnection closes a client connection with 320 CONNECTION_FORCED and reason.
	CloseConnection(name, reason string) error
}

// Overview is the node-wide state behind /api/overview, /api/nodes and /metrics.
type Overview struct {
	ClusterName string
	Node        string // node name, e.g. "warren@host"
	Version     string // Warren's version, reported as product_version
	Listeners   []Listener
	StartedAt   time.Time

	Connections, Channels, Consumers, Exchanges, Queues int
	// Messages, MessagesReady and MessagesUnacked are summed over all queues.
	Messages, MessagesReady, MessagesUnacked int64
	// Stats are the node's message counters since start (monotonic).
	Stats Counters
	Churn Churn

	// Resources and alarms.
	MemUsed, MemLimit           int64
	MemAlarm                    bool
	DiskFree, DiskFreeLimit     int64
	DiskAlarm                   bool
	FDUsed, FDTotal             int
	Processors                  int
	RunQueue                    int
	Warren                      WarrenStats
	ExchangeTypes               []string // e.g. direct, fanout, headers, topic
	AuthMechanisms              []string // enabled SASL mechanisms, e.g. PLAIN, AMQPLAIN, EXTERNAL
	ConfigFiles                 []string
	DataDir                     string
	MemoryHighWatermarkRelative float64
	// Cluster is the cluster as this node sees it; nil on a single node.
	Cluster *ClusterInfo
}

// ClusterInfo is the cluster state behind /api/nodes on a cluster node: the metadata Raft
// group as this node sees it and every configured member.
type ClusterInfo struct {
	Leader, State                   string // the Raft leader's name ("" when unknown), this node's Raft state
	Term, CommitIndex, AppliedIndex uint64
	ConfigDigest                    string // this node's access-control and policy digest
	Members                         []ClusterMember
}

// ClusterMember is one configured node of the cluster.
type ClusterMember struct {
	Name, Address string
	Running       bool // this node, or one whose status is recent
	Voter         bool // in the metadata group's Raft configuration
	ConfigDigest  string
	ConfigMatch   bool // its digest equals this node's
	AppliedIndex  uint64
	LastSeen      time.Time
}

// Listener is one open listening socket.
type Listener struct {
	Protocol string // amqp, amqp/ssl, http, https, http/prometheus
	IP       string
	Port     int
}

// Churn counts objects created and destroyed since start (RabbitMQ's churn_rates).
type Churn struct {
	ConnectionsOpened, ConnectionsClosed uint64
	ChannelsOpened, ChannelsClosed       uint64
	QueuesDeclared, QueuesCreated        uint64
	QueuesDeleted                        uint64
}

// WarrenStats are Warren's own measures, exported as warren_* metrics.
type WarrenStats struct {
	JournalCommits        uint64 // group-commit batches written
	JournalCommitMessages uint64 // messages and acks written by those batches
	Fsync                 Histogram
	PagedOutMessages      int64  // ready messages whose bodies live only on disk
	FlowPauses            uint64 // times a publisher was held by flow control
	// ForwardsDropped counts the messages a cluster node dropped instead of forwarding them to
	// their home node (dead-lettered or delayed messages, which no publisher waits for, when
	// the forward queue was full); always 0 on a single node.
	ForwardsDropped uint64
}

// Histogram is a cumulative histogram in Prometheus' form: Buckets maps an upper bound to the
// number of observations at or below it.
type Histogram struct {
	Count   uint64
	Sum     float64
	Buckets map[float64]uint64
}

// Counters are RabbitMQ's message_stats counters, monotonic since the object was created. The API
// derives the *_details.rate values from them by sampling.
type Counters struct {
	Publish, Confirm, ReturnUnroutable, DropUnroutable uint64
	Deliver, DeliverNoAck, Get, GetNoAck, GetEmpty     uint64
	Ack, Redeliver                                     uint64
	// PublishIn and PublishOut are an exchange's messages received and routed on.
	PublishIn, PublishOut uint64
}

// VHostInfo is one virtual host.
type VHostInfo struct {
	Name, Description string
	Tags              []string
	Messages          int64
	MessagesReady     int64
	MessagesUnacked   int64
	Stats             Counters
	RecvOct, SendOct  uint64
	// Limits are RabbitMQ's vhost limits that are set, e.g. {"max-connections": 10}.
	Limits map[string]any
}

// QueueInfo is one queue.
type QueueInfo struct {
	VHost, Name                    string
	Durable, AutoDelete, Exclusive bool
	// Owner is the name of the connection owning an exclusive queue.
	Owner string
	Type  string // "classic"
	State string // "running"
	// Arguments are the x-arguments as declared, with JSON-friendly values.
	Arguments map[string]any
	// Policy names the policy that applies, "" for none; EffectivePolicy is its definition.
	Policy          string
	EffectivePolicy map[string]any

	Messages, MessagesReady, MessagesUnacked   int64
	Bytes, BytesReady, BytesUnacked            int64
	MessagesPersistent, BytesPersistent        int64
	MessagesPagedOut, BytesPagedOut            int64
	MessagesRAM, BytesRAM                      int64
	Consumers                                  int
	ConsumerUtilisation                        float64 // 0..1; 1 when consumers keep up
	Memory                                     int64   // bytes held for this queue
	Stats                                      Counters
	IdleSince                                  time.Time // zero when active
	HeadMessageTimestamp                       int64     // the head message's timestamp property, 0 if none
	SingleActiveConsumerTag, ExclusiveConsumer string

	// A quorum queue's replicas (Type "quorum"): Members are their nodes, Online those
	// running, Leader the node leading its Raft group ("" when this node does not know it).
	// Nil Members: not a quorum queue, or the broker does not say.
	Leader          string
	Members, Online []string
	// Raft is this node's replica of a quorum queue's Raft group (nil: none here): the
	// per-queue rabbitmq_raft_* metrics.
	Raft *RaftInfo
}

// RaftInfo is a node's replica of a quorum queue's Raft group, as RabbitMQ's
// rabbitmq_raft_* metrics report it.
type RaftInfo struct {
	Term                   uint64
	CommitIndex, LastIndex uint64 // committed; last written to this node's log
	AppliedIndex, Snapshot uint64 // applied here; latest snapshot's index (0: none)
}

// ExchangeInfo is one exchange.
type ExchangeInfo struct {
	VHost, Name, Type             string
	Durable, AutoDelete, Internal bool
	Arguments                     map[string]any
	Policy                        string
	Stats                         Counters // PublishIn, PublishOut
}

// BindingInfo is one binding; DestinationType is "queue" or "exchange".
type BindingInfo struct {
	VHost, Source, Destination, DestinationType, RoutingKey string
	Arguments                                               map[string]any
}

// ConnectionInfo is one client connection.
type ConnectionInfo struct {
	Name             string // "peer_host:peer_port -> host:port", RabbitMQ's form
	User, VHost      string
	Host, PeerHost   string
	Port, PeerPort   int
	Protocol         string // "AMQP 0-9-1"
	AuthMechanism    string
	State            string // running, blocked, blocking, closing
	Channels         int
	ChannelMax       int
	FrameMax         int
	Heartbeat        int // seconds (RabbitMQ's "timeout")
	ClientProperties map[string]any
	RecvOct, SendOct uint64
	RecvCnt, SendCnt uint64
	ConnectedAt      time.Time
	TLS              bool
	TLSProtocol      string
}

// ChannelInfo is one channel of a connection.
type ChannelInfo struct {
	Connection                 string // the connection's Name
	Number                     int
	User, VHost                string
	PeerHost                   string
	PeerPort                   int
	State                      string
	Consumers                  int
	PrefetchCount, GlobalCount int
	Unacked, Unconfirmed       int
	Uncommitted, AcksUncommit  int
	Confirm, Transactional     bool
	Stats                      Counters
	IdleSince                  time.Time
}

// ConsumerInfo is one consumer.
type ConsumerInfo struct {
	VHost, Queue, Tag      string
	Connection             string // the connection's Name
	Channel                int
	User, PeerHost         string
	PeerPort               int
	AckRequired, Exclusive bool
	Active                 bool
	PrefetchCount          int
	Arguments              map[string]any
}

// UserInfo is one configured user.
type UserInfo struct {
	Name         string
	PasswordHash string // RabbitMQ sha256 hash, "" when none (exported as is)
	Tags         []string
	Limits       map[string]any // max-connections, max-channels when set
}

// PermissionInfo is one configured permission.
type PermissionInfo struct {
	User, VHost, Configure, Write, Read string
}

// PolicyInfo is one configured policy.
type PolicyInfo struct {
	VHost, Name, Pattern, ApplyTo string
	Priority                      int
	Definition                    map[string]any
}

// QueueOptions are the properties of a queue declared through the API.
type QueueOptions struct {
	Durable, AutoDelete bool
	Arguments           map[string]any
}

// ExchangeOptions are the properties of an exchange declared through the API.
type ExchangeOptions struct {
	Type                          string
	Durable, AutoDelete, Internal bool
	Arguments                     map[string]any
}

// AckMode says what happens to messages taken by GetMessages (RabbitMQ's ackmode).
type AckMode int

// The ack modes of POST /api/queues/vhost/name/get.
const (
	AckRequeue    AckMode = iota // ack_requeue_true: returned to the queue, marked redelivered
	AckNoRequeue                 // ack_requeue_false: removed
	RejectRequeue                // reject_requeue_true: returned to the queue
	RejectDrop                   // reject_requeue_false: rejected, dead-lettered if configured
)

// Message is a message taken by GetMessages.
type Message struct {
	Exchange, RoutingKey string
	Redelivered          bool
	// Remaining is the number of messages left in the queue after this one (message_count).
	Remaining int
	// Properties are the basic properties with RabbitMQ's management names (content_type,
	// headers, delivery_mode, priority, correlation_id, reply_to, expiration, message_id,
	// timestamp, type, user_id, app_id, content_encoding); unset ones are absent.
	Properties map[string]any
	Payload    []byte
}

// Publishing is a message published through the API.
type Publishing struct {
	RoutingKey string
	Properties map[string]any // as Message.Properties
	Payload    []byte
}

// Kind classifies an error the way the API answers it.
type Kind int

// Error kinds. The broker maps its AMQP errors onto them: 404 NOT_FOUND -> NotFound,
// 406 PRECONDITION_FAILED -> PreconditionFailed, 403 ACCESS_REFUSED -> AccessRefused,
// 405 RESOURCE_LOCKED -> ResourceLocked, bad arguments (RabbitMQ's 406 or 400 on AMQP) -> BadRequest.
const (
	KindInternal Kind = iota
	KindNotFound
	KindPreconditionFailed
	KindAccessRefused
	KindResourceLocked
	KindBadRequest
)

// Error is a broker error the API turns into RabbitMQ's status code and JSON body.
type Error struct {
	Kind   Kind
	Reason string // RabbitMQ's text, e.g. "queue 'q1' in vhost '/' in use"; "" for a plain 404
	Err    error  // the underlying error, if any
}

// Error returns the reason, RabbitMQ's text for the error.
func (e *Error) Error() string {
	if e.Reason != "" {
		return e.Reason
	}
	if e.Err != nil {
		return e.Err.Error()
	}
	return "not found"
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// NotFound is a missing vhost, queue, exchange, binding or connection.
func NotFound(format string, a ...any) error {
	return &Error{Kind: KindNotFound, Reason: fmt.Sprintf(format, a...)}
}

// PreconditionFailed is RabbitMQ's 406: an inequivalent redeclare, if-unused/if-empty refused.
func PreconditionFailed(format string, a ...any) error {
	return &Error{Kind: KindPreconditionFailed, Reason: fmt.Sprintf(format, a...)}
}

// AccessRefused is RabbitMQ's 403, e.g. a reserved amq.* name.
func AccessRefused(format string, a ...any) error {
	return &Error{Kind: KindAccessRefused, Reason: fmt.Sprintf(format, a...)}
}

// ResourceLocked is RabbitMQ's 405: an exclusive queue of another connection.
func ResourceLocked(format string, a ...any) error {
	return &Error{Kind: KindResourceLocked, Reason: fmt.Sprintf(format, a...)}
}

// BadRequest is an invalid argument or value.
func BadRequest(format string, a ...any) error {
	return &Error{Kind: KindBadRequest, Reason: fmt.Sprintf(format, a...)}
}

// kindOf returns the Kind of err, KindInternal for errors that are not *Error.
func kindOf(err error) (Kind, string) {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind, e.Reason
	}
	return KindInternal, err.Error()
}
