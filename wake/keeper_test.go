package wake

import (
	"slices"
	"testing"

	"github.com/neonproxy/neonproxy/walkeeper"
)

// TestPickCandidates: a recovery reads from the keepers holding WAL of the
// newest generation, not from those that merely adopted it. The lagging
// case is the one that lost acknowledged commits: a keeper that adopted a
// new generation while behind, whose stream then ended, was the only
// candidate, and the recovery replayed its shorter WAL.
func TestPickCandidates(t *testing.T) {
	in := func(i int, gen, dataGen uint64, flush walkeeper.LSN) memberInfo {
		return memberInfo{i: i, in: walkeeper.Info{Gen: gen, DataGen: dataGen, Flush: flush, GenStart: 1}}
	}
	for _, tc := range []struct {
		name    string
		answers []memberInfo
		want    []int // members, in order
		wantGen uint64
	}{
		{"one generation: highest flush first", []memberInfo{in(0, 5, 5, 90), in(1, 5, 5, 100), in(2, 5, 5, 50)}, []int{1, 0, 2}, 5},
		{"older generation's WAL left out", []memberInfo{in(0, 5, 5, 200), in(1, 6, 6, 120), in(2, 6, 6, 130)}, []int{2, 1}, 6},
		{"lagging adopter of a newer generation", []memberInfo{in(0, 5, 5, 100), in(1, 5, 5, 90), in(2, 6, 5, 50)}, []int{0, 1, 2}, 6},
		{"the adopter caught up", []memberInfo{in(0, 5, 5, 100), in(2, 6, 6, 150)}, []int{2}, 6},
	} {
		t.Run(tc.name, func(t *testing.T) {
			views := pickCandidates(tc.answers)
			var got []int
			for _, v := range views {
				got = append(got, v.member)
				if v.gen != tc.wantGen {
					t.Errorf("gen %d, want %d (the next start goes above it)", v.gen, tc.wantGen)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("candidates %v, want %v", got, tc.want)
			}
		})
	}
}
