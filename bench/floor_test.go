package main

import "testing"

// TestAnswerScan splits answers at every point: the end of a transaction
// is seen once, in the read that completes ReadyForQuery 'I', and never
// for 'T' or 'E' or a 'Z' byte inside a message.
func TestAnswerScan(t *testing.T) {
	var idleAnswer []byte
	idleAnswer = floorMsg(idleAnswer, 'T', "\x00\x01a\x00")
	idleAnswer = floorMsg(idleAnswer, 'D', "Z\x00\x00\x00\x01I")
	idleAnswer = floorMsg(idleAnswer, 'I', "") // EmptyQueryResponse: no body
	idleAnswer = floorMsg(idleAnswer, 'C', "SELECT 1\x00")
	idleAnswer = floorMsg(idleAnswer, 'Z', "I")
	inTx := floorMsg(floorMsg(nil, 'C', "BEGIN\x00"), 'Z', "T")
	for _, tc := range []struct {
		name   string
		answer []byte
		idle   bool
	}{
		{"idle", idleAnswer, true},
		{"in a transaction", inTx, false},
		{"transaction then idle", append(append([]byte{}, inTx...), idleAnswer...), true},
	} {
		for cut := 0; cut <= len(tc.answer); cut++ {
			for cut2 := cut; cut2 <= len(tc.answer); cut2++ {
				var s answerScan
				parts := [][]byte{tc.answer[:cut], tc.answer[cut:cut2], tc.answer[cut2:]}
				seen := -1
				for i, p := range parts {
					if s.feed(p) {
						seen = i
					}
				}
				last := 2
				for last > 0 && len(parts[last]) == 0 {
					last--
				}
				if tc.idle && seen != last || !tc.idle && seen != -1 {
					t.Fatalf("%s cut at %d, %d: end seen in part %d, want %v in part %d", tc.name, cut, cut2, seen, tc.idle, last)
				}
			}
		}
	}
}

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
