package main

import "testing"

func TestWholeMessagesAndStartup(t *testing.T) {
	q := floorMsg(nil, 'Q', "select 1\x00")
	two := append(append([]byte{}, q...), q...)
	for n := 0; n <= len(two); n++ {
		want := 0
		switch {
		case n == len(two):
			want = len(two)
		case n >= len(q):
			want = len(q)
		}
		if got := wholeMessages(two[:n]); got != want {
			t.Errorf("wholeMessages of %d bytes = %d, want %d", n, got, want)
		}
	}
	ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	if n, isSSL := startupLen(ssl); n != 8 || !isSSL {
		t.Errorf("SSLRequest: %d %v", n, isSSL)
	}
	if n, _ := startupLen(ssl[:7]); n != 0 {
		t.Errorf("partial startup: %d", n)
	}
}
