package render

// NamesHash sizes nginx's server names hash (server_names_hash_bucket_size
// and server_names_hash_max_size, directives of the http block) for the
// names the servers render.
type NamesHash struct {
	BucketSize, MaxSize int
}

// nginx's defaults, and what they hold: a bucket keeps, for each name, a
// pointer and the name (with 2 bytes, aligned to 8), and a pointer at its
// end, so 64 bytes hold one name of up to 46 characters: a longer one is
// an error ("could not build server_names_hash"). Too many names for the
// buckets is a warning at each reload ("could not build optimal
// server_names_hash"); measured with upstreamd/nginx, 32 names never were.
const (
	defaultNamesBucket  = 64
	defaultNamesMaxSize = 512
	defaultNamesLongest = 46
	defaultNamesCount   = 32
)

// namesHash returns the sizes the servers' names need, or nil when
// nginx's defaults hold them (the config then does not say them). Beyond
// the defaults, a bucket holds four of the longest name and there may be
// four buckets per name: measured with upstreamd/nginx on random names,
// nginx then builds the hash without a warning for up to 3,000 names of
// every length up to 253. A bigger bucket costs no memory, nginx sizes
// each to what it holds; a wildcard is counted whole, though nginx keeps
// its labels, which is more than it needs.
func namesHash(servers []Server) *NamesHash {
	n, longest := 0, 0
	for _, s := range servers {
		for _, name := range s.Names {
			n++
			longest = max(longest, len(name))
		}
	}
	if n <= defaultNamesCount && longest <= defaultNamesLongest {
		return nil
	}
	entry := 8 + (longest+2+7)&^7 // its pointer and the name, aligned
	bucket := defaultNamesBucket
	for bucket < 8+4*entry {
		bucket *= 2
	}
	return &NamesHash{BucketSize: bucket, MaxSize: max(defaultNamesMaxSize, 4*n)}
}
