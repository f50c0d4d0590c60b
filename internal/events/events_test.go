package events

import (
	"math"
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
	changed := j.SubscribeUntil(t.Context())
	evs, missed := j.Since(0)
	if len(evs) != 0 || missed != 0 {
		t.Fatalf("empty journal: %v, %d missed", evs, missed)
	}
	for range 2 {
		j.Record(Event{Kind: Died})
	}
	select {
	case <-changed:
	default:
		t.Fatal("no change said by Record")
	}
	if evs, _ := j.Since(0); !slices.Equal(seqs(evs), []int64{1, 2}) {
		t.Errorf("Since(0) = %v; want [1 2]", seqs(evs))
	}
	for range 3 { // 5 recorded, 3 held
		j.Record(Event{Kind: Died})
	}
	evs, missed = j.Since(0)
	if !slices.Equal(seqs(evs), []int64{3, 4, 5}) || missed != 2 {
		t.Errorf("Since(0) = %v, %d missed; want [3 4 5], 2 missed", seqs(evs), missed)
	}
	evs, missed = j.Since(4)
	if !slices.Equal(seqs(evs), []int64{5}) || missed != 0 {
		t.Errorf("Since(4) = %v, %d missed; want [5], 0", seqs(evs), missed)
	}
	if evs, _ := j.Since(5); len(evs) != 0 {
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

func TestJournalSinceOutOfRange(t *testing.T) {
	j := New(3)
	for range 5 {
		j.Record(Event{Kind: Died})
	}
	for _, c := range []struct {
		name   string
		seq    int64
		want   []int64
		missed int64
	}{
		{"huge negative", math.MinInt64, []int64{3, 4, 5}, 2},
		{"negative", -1, []int64{3, 4, 5}, 2},
		{"above the last", 6, nil, 0},
		{"huge", math.MaxInt64, nil, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			evs, missed := j.Since(c.seq)
			if !slices.Equal(seqs(evs), c.want) || missed != c.missed {
				t.Errorf("Since(%d) = %v, %d missed; want %v, %d", c.seq, seqs(evs), missed, c.want, c.missed)
			}
		})
	}
}

func TestJournalRuns(t *testing.T) {
	j, other := New(3), New(3)
	if j.Run() == "" || j.Run() == other.Run() {
		t.Fatalf("runs %q and %q; want two different ids", j.Run(), other.Run())
	}
	for range 5 {
		j.Record(Event{Kind: Died})
	}
	last := j.Last(1)[0]
	if last.Run != j.Run() || last.Cursor() != j.Run()+"-5" {
		t.Errorf("the last event: run %q, cursor %q; want %q, %q", last.Run, last.Cursor(), j.Run(), j.Run()+"-5")
	}
	for _, c := range []struct {
		cursor string
		want   int64
		bad    bool
	}{
		{cursor: "", want: 0},
		{cursor: "0", want: 0},
		{cursor: "4", want: 4},
		{cursor: j.Run() + "-4", want: 4},
		{cursor: j.Run() + "-5", want: 5},
		// A previous run's: this run's events from the first.
		{cursor: other.Run() + "-4", want: 0},
		{cursor: other.Run() + "-400", want: 0},
		// A bare number this run never reached: a previous run's.
		{cursor: "6", want: 0},
		{cursor: "9223372036854775807", want: 0},
		{cursor: j.Run() + "-6", want: 0},
		{cursor: "-1", bad: true},
		{cursor: "-9223372036854775808", bad: true},
		{cursor: j.Run() + "--1", bad: true},
		{cursor: "x", bad: true},
		{cursor: j.Run() + "-x", bad: true},
		{cursor: "-", bad: true},
	} {
		got, err := j.After(c.cursor)
		switch {
		case c.bad && err == nil:
			t.Errorf("After(%q) = %d; want an error", c.cursor, got)
		case !c.bad && (err != nil || got != c.want):
			t.Errorf("After(%q) = %d, %v; want %d", c.cursor, got, err, c.want)
		}
	}
}
