package server

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"

	"github.com/warrenmq/warren/amqp"
	"github.com/warrenmq/warren/broker"
)

// authenticate checks a start-ok response and returns the user name. Failures are 403
// ACCESS_REFUSED with RabbitMQ's wording, sent as connection.close because Warren advertises
// authentication_failure_close. EXTERNAL logs in as the common name of the verified TLS client
// certificate (peerCN), as RabbitMQ's rabbitmq_auth_mechanism_ssl does by default. secure is
// the handshake's connection.secure step, for a mechanism with a challenge (the link login's).
func (s *Server) authenticate(mechanism, response, peerCN string, remote net.Addr, secure func(challenge string) (string, error)) (string, error) {
	rt := s.rt.Load()
	refused := amqp.Errorf(amqp.AccessRefused, "Login was refused using authentication mechanism %s. For details see the broker logfile.", mechanism)
	var user, pass string
	switch mechanism {
	case "EXTERNAL":
		if peerCN == "" || rt.users[peerCN] == nil {
			return "", refused
		}
		user = peerCN
	case broker.LinkMechanism:
		return s.authenticateLink(response, refused, secure, remote)
	case "PLAIN":
		// authzid NUL authcid NUL password
		parts := bytes.SplitN([]byte(response), []byte{0}, 3)
		if len(parts) != 3 {
			return "", amqp.Errorf(amqp.AccessRefused, "Login was refused using authentication mechanism PLAIN: malformed response")
		}
		if len(parts[0]) != 0 {
			// RabbitMQ's PLAIN takes no authorization identity: acting as another user is
			// not something a login may ask for.
			return "", refused
		}
		user, pass = string(parts[1]), string(parts[2])
	case "AMQPLAIN":
		// A field table without its length prefix.
		b := make([]byte, 4+len(response))
		n := len(response)
		b[0], b[1], b[2], b[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		copy(b[4:], response)
		t, _, err := amqp.DecodeTable(b)
		if err != nil {
			return "", amqp.Errorf(amqp.AccessRefused, "Login was refused using authentication mechanism AMQPLAIN: malformed response")
		}
		user, _ = t["LOGIN"].(string)
		pass, _ = t["PASSWORD"].(string)
	default:
		return "", amqp.Errorf(amqp.AccessRefused, "unsupported authentication mechanism '%s'", mechanism)
	}
	if mechanism != "EXTERNAL" {
		u := rt.users[user]
		if u == nil || !checkPassword(u, pass) {
			return "", refused
		}
	}
	if rt.loopback[user] && !isLoopback(remote) {
		return "", refused
	}
	return user, nil
}

func checkPassword(u *User, pass string) bool {
	switch {
	case u.PasswordHash != "":
		return checkRabbitHash(u.PasswordHash, pass)
	case u.Password == "":
		return false // no password: certificate (EXTERNAL) login only
	}
	return subtle.ConstantTimeCompare([]byte(u.Password), []byte(pass)) == 1
}

// decodeRabbitHash decodes RabbitMQ's rabbit_password_hashing_sha256 format,
// base64(salt[4] ++ sha256(salt ++ password)); ok is false for anything else.
func decodeRabbitHash(hash string) (raw []byte, ok bool) {
	raw, err := base64.StdEncoding.DecodeString(hash)
	return raw, err == nil && len(raw) == 4+sha256.Size
}

// validRabbitHash reports whether hash has the rabbit_password_hashing_sha256 shape.
func validRabbitHash(hash string) bool {
	_, ok := decodeRabbitHash(hash)
	return ok
}

// checkRabbitHash verifies pass against a rabbit_password_hashing_sha256 hash.
func checkRabbitHash(hash, pass string) bool {
	raw, ok := decodeRabbitHash(hash)
	if !ok {
		return false
	}
	h := sha256.New()
	h.Write(raw[:4])
	h.Write([]byte(pass))
	return subtle.ConstantTimeCompare(h.Sum(nil), raw[4:]) == 1
}

// NewPasswordHash hashes pass as HashPassword with a fresh random salt.
func NewPasswordHash(pass string) string {
	var salt [4]byte
	_, _ = rand.Read(salt[:]) // crypto/rand.Read never fails (Go 1.24 and later)
	return HashPassword(salt, pass)
}

// HashPassword returns a RabbitMQ-compatible salted SHA-256 hash of pass using salt.
func HashPassword(salt [4]byte, pass string) string {
	h := sha256.New()
	h.Write(salt[:])
	h.Write([]byte(pass))
	return base64.StdEncoding.EncodeToString(append(salt[:], h.Sum(nil)...))
}

func isLoopback(a net.Addr) bool {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.IsLoopback()
	}
	return false
}
