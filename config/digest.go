package config

import (
	"cmp"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"slices"

	"github.com/warrenmq/warren/server"
)

// AccessDigest is an HMAC-SHA256 of the sections every node of a cluster must agree on but
// reads from its own file: users, vhosts, permissions and policies. The cluster compares the
// nodes' digests and reports a node whose file differs (access control and policies are not
// replicated). Order in the file does not matter: entries are sorted first, so two files
// listing the same entries in another order have the same digest. Passwords take part (a user
// whose password differs between nodes logs in on some nodes only) but only through the hash,
// never in the clear. The HMAC is keyed with cluster.name and cluster.secret: the digest is
// shown to monitoring users (/api/nodes), and an unkeyed hash over plain-text passwords could
// be checked against guesses offline; without the secret it cannot.
func (s *Settings) AccessDigest() string {
	c := s.Server
	users := slices.Clone(c.Users)
	for i := range users {
		users[i].Tags = slices.Sorted(slices.Values(users[i].Tags))
	}
	slices.SortFunc(users, func(a, b server.User) int { return cmp.Compare(a.Name, b.Name) })
	vhosts := slices.Clone(c.VHosts)
	slices.SortFunc(vhosts, func(a, b server.VHost) int { return cmp.Compare(a.Name, b.Name) })
	perms := slices.Clone(c.Permissions)
	slices.SortFunc(perms, func(a, b server.Permission) int {
		return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.VHost, b.VHost))
	})
	pols := slices.Clone(c.Policies)
	slices.SortFunc(pols, func(a, b server.Policy) int {
		return cmp.Or(cmp.Compare(a.VHost, b.VHost), cmp.Compare(a.Name, b.Name))
	})
	// encoding/json writes struct fields in declaration order and map keys sorted: one
	// configuration, one encoding.
	b, err := json.Marshal(struct {
		Users       []server.User
		VHosts      []server.VHost
		Permissions []server.Permission
		Policies    []server.Policy
	}{users, vhosts, perms, pols})
	if err != nil {
		// A policy definition holding a value JSON cannot encode: a digest of what can be
		// encoded would hide differences, so this node's digest matches no other.
		return "unencodable: " + err.Error()
	}
	mac := hmac.New(sha256.New, digestKey(s.Cluster.Name, s.Cluster.Secret.Reveal()))
	mac.Write(b)
	return hex.EncodeToString(mac.Sum(nil))
}

// digestKey is the AccessDigest key: the name and the secret, length-prefixed so that no other
// pair makes the same key.
func digestKey(name, secret string) []byte {
	k := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	k = append(k, name...)
	return append(k, secret...)
}
