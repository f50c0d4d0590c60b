package events

import (
	"slices"
	"testing"
)

func seqs(evs []Event) []int64 {
	out := make([]int64, len(evs))
	for i, e := range evs {
		out[i] = e.Seq
	}
	return out
}

func TestJournalRing(t *testing.T) {
	j := New(3)
	evs, missed, changed := j.Since(0)
	if len(evs) != 0 || missed != 0 {
		t.Fatalf("empty journal: %v, %d missed", evs, missed)
	}
	for range 2 {
		j.Record(Event{Kind: Died})
	}
	select {
	case <-changed:
	default:
		t.Fatal("changed not closed by Record")
	}
	if evs, _, _ := j.Since(0); !slices.Equal(seqs(evs), []int64{1, 2}) {
		t.Errorf("Since(0) = %v; want [1 2]", seqs(evs))
	}
	for range 3 { // 5 recorded, 3 held
		j.Record(Event{Kind: Died})
	}
	evs, missed, _ = j.Since(0)
	if !slices.Equal(seqs(evs), []int64{3, 4, 5}) || missed != 2 {
		t.Errorf("Since(0) = %v, %d missed; want [3 4 5], 2 missed", seqs(evs), missed)
	}
	evs, missed, _ = j.Since(4)
	if !slices.Equal(seqs(evs), []int64{5}) || missed != 0 {
		t.Errorf("Since(4) = %v, %d missed; want [5], 0", seqs(evs), missed)
	}
	if evs, _, _ := j.Since(5); len(evs) != 0 {
		t.Errorf("Since(5) = %v; want none", seqs(evs))
	}
	if got := seqs(j.Last(2)); !slices.Equal(got, []int64{4, 5}) {
		t.Errorf("Last(2) = %v; want [4 5]", got)
	}
	if got := seqs(j.Last(0)); !slices.Equal(got, []int64{3, 4, 5}) {
		t.Errorf("Last(0) = %v; want [3 4 5]", got)
	}
	if j.Last(1)[0].Time.IsZero() {
		t.Error("an event recorded without a time was not stamped")
	}
}

func TestNilJournalRecordsNothing(t *testing.T) {
	var j *Journal
	j.Record(Event{Kind: Died}) // must not panic
}
