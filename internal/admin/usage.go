package admin

import (
	"fmt"
	"net/http"
	"sort"
	"time"
)

// usage answers GET /v1/usage?from=RFC3339&to=RFC3339: every branch's
// compute time and wakes over the window (default: this calendar month,
// UTC, up to now), deleted branches included, with each live branch's
// storage now, and the sum. Compute usage is kept per hour: the hours
// that overlap the window are summed.
func (h *Handler) usage(w http.ResponseWriter, r *http.Request) {
	now := time.Now().UTC()
	from := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	to := now
	for key, dst := range map[string]*time.Time{"from": &from, "to": &to} {
		if v := r.URL.Query().Get(key); v != "" {
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				writeError(w, r, http.StatusBadRequest, fmt.Sprintf("%s=%q: want an RFC 3339 time, e.g. 2024-05-01T00:00:00Z", key, v))
				return
			}
			*dst = t.UTC()
		}
	}
	if !to.After(from) {
		writeError(w, r, http.StatusBadRequest, fmt.Sprintf("the window is empty: from %s is not before to %s", from.Format(time.RFC3339), to.Format(time.RFC3339)))
		return
	}
	ctx := r.Context()
	bs, err := h.reg.List(ctx)
	if err != nil {
		writeError(w, r, errorStatus(err), "list branches: "+err.Error())
		return
	}
	usage, err := h.comp.Usage(ctx, "", from, to)
	if err != nil {
		writeError(w, r, errorStatus(err), "usage: "+err.Error())
		return
	}
	live := map[string]bool{}
	for _, b := range bs {
		live[b.Name] = true
		if _, ok := usage[b.Name]; !ok {
			usage[b.Name] = UsageJSON{}
		}
	}
	out := UsageReportJSON{From: from, To: to, Branches: make([]BranchUsageJSON, 0, len(usage))}
	for name, u := range usage {
		out.Branches = append(out.Branches, BranchUsageJSON{Branch: name, Deleted: !live[name], UsageJSON: u})
		out.Total.Add(u)
	}
	sort.Slice(out.Branches, func(i, j int) bool { return out.Branches[i].Branch < out.Branches[j].Branch })
	writeJSON(w, http.StatusOK, out)
}
