package config

import (
	"fmt"
	"strings"
)

// CheckReload refuses to replace the running settings with next when next is almost certainly
// a configuration file caught half-written or emptied (an editor truncating before writing, a
// copy in progress, a full disk) rather than what the operator meant:
//
//   - the file has no settings at all (empty, or only whitespace and comments), which would
//     silently bring back the defaults - guest/guest included;
//   - next keeps none of the running users, or none of the running vhosts, which would close
//     every connection.
//
// It also refuses the cluster changes CheckClusterReload names (cluster.nodes may change).
//
// Replacing all users or all vhosts at once needs a restart, or two reloads (add the new ones,
// then remove the old). The error names what would have been lost.
func CheckReload(running, next *Settings) error {
	if next.emptyFile {
		return fmt.Errorf("config: %s has no settings (empty, or only whitespace and comments); a reload does not turn it into the defaults", next.ConfigFile)
	}
	var oldUsers, newUsers []string
	for _, u := range running.Server.Users {
		oldUsers = append(oldUsers, u.Name)
	}
	for _, u := range next.Server.Users {
		newUsers = append(newUsers, u.Name)
	}
	if noneKept(oldUsers, newUsers) {
		return fmt.Errorf("config: the new configuration%s removes every user (%s); restart, or add the new users in one reload and remove the old ones in another", from(next), strings.Join(oldUsers, ", "))
	}
	var oldVHosts, newVHosts []string
	for _, v := range running.Server.VHosts {
		oldVHosts = append(oldVHosts, v.Name)
	}
	for _, v := range next.Server.VHosts {
		newVHosts = append(newVHosts, v.Name)
	}
	if noneKept(oldVHosts, newVHosts) {
		return fmt.Errorf("config: the new configuration%s removes every vhost (%s); restart, or add the new vhosts in one reload and remove the old ones in another", from(next), strings.Join(oldVHosts, ", "))
	}
	return CheckClusterReload(&running.Cluster, &next.Cluster)
}

// noneKept reports whether there were names and next keeps none of them.
func noneKept(names, next []string) bool {
	keep := make(map[string]bool, len(next))
	for _, n := range next {
		keep[n] = true
	}
	for _, n := range names {
		if keep[n] {
			return false
		}
	}
	return len(names) > 0
}

// from names the file a configuration came from, for error messages.
func from(s *Settings) string {
	if s.ConfigFile == "" {
		return ""
	}
	return " (from " + s.ConfigFile + ")"
}
