// Package mounts lists this process's mount points, for tests that must
// leave none behind (compute.local_cow mounts overlays).
package mounts

import (
	"os"
	"strings"
)

// Under returns the mount points strictly under dir, from
// /proc/self/mountinfo (none where it cannot be read).
func Under(dir string) []string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	prefix := strings.TrimSuffix(dir, "/") + "/"
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		// Field 5 is the mount point (octal escapes for spaces, which
		// our paths do not have).
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], prefix) {
			out = append(out, f[4])
		}
	}
	return out
}
