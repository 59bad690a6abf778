//go:build !unix

package node

// maxFiles is unknown on this system.
func maxFiles() int { return 0 }
