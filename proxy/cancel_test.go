package proxy

import "testing"

func TestCancelKeys(t *testing.T) {
	c := newCancelKeys()
	t1, t2 := &cancelTarget{branch: "main"}, &cancelTarget{branch: "dev"}
	t1.set("/sock", 11, nil)
	t2.set("/sock", 22, nil)
	k1, err := c.issue(t1)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := c.issue(t2)
	if err != nil {
		t.Fatal(err)
	}
	if k1.ProcessID == k2.ProcessID || k1.ProcessID == 0 || int32(k1.ProcessID) < 0 {
		t.Fatalf("keys %d %d", k1.ProcessID, k2.ProcessID)
	}
	if got := c.lookup(k1.ProcessID, k1.SecretKey); got != t1 {
		t.Fatalf("lookup k1: %+v", got)
	}
	wrong := append([]byte(nil), k1.SecretKey...)
	wrong[0] ^= 1
	for _, tt := range []struct {
		name   string
		pid    uint32
		secret []byte
	}{
		{"wrong secret", k1.ProcessID, wrong},
		{"short secret", k1.ProcessID, k1.SecretKey[:3]},
		{"other key's secret", k1.ProcessID, k2.SecretKey},
		{"unknown pid", k1.ProcessID + k2.ProcessID, k1.SecretKey},
	} {
		if c.lookup(tt.pid, tt.secret) != nil {
			t.Errorf("%s: accepted", tt.name)
		}
	}
	c.revoke(k1.ProcessID)
	if c.lookup(k1.ProcessID, k1.SecretKey) != nil || c.len() != 1 {
		t.Fatal("revoked key still valid")
	}
}

// TestCancelKeysNameTheirNode: in a cluster every pid carries the node's
// index (router.MaxNodes = 1024 fit), stays positive and unique.
func TestCancelKeysNameTheirNode(t *testing.T) {
	for _, node := range []int{0, 1, 5, 1023} {
		c := newCancelKeys()
		c.node = node
		seen := map[uint32]bool{}
		for range 2000 {
			k, err := c.issue(&cancelTarget{})
			if err != nil {
				t.Fatal(err)
			}
			if nodeOfPID(k.ProcessID) != node || int32(k.ProcessID) <= 0 || seen[k.ProcessID] {
				t.Fatalf("node %d: pid %#x (node %d, seen %v)", node, k.ProcessID, nodeOfPID(k.ProcessID), seen[k.ProcessID])
			}
			seen[k.ProcessID] = true
		}
	}
}
