package spec

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/pelletier/go-toml/v2"
)

// Encode writes the project's part in canonical form: TOML with every key
// at its value, the defaults written out, fields in a fixed order and
// tables' keys sorted. Parse reads it back to a part that encodes alike,
// and nothing of the node's part is in it: it is what the nodes of a
// project share, and what a stored revision of the project holds. Paths
// (proxy.template, the certificate files) are as written, relative to the
// spec file's directory.
func (p Project) Encode() []byte {
	b, err := toml.Marshal(p)
	if err != nil {
		panic(err) // plain data always marshals
	}
	return b
}

// Hash identifies the project's part: the SHA-256 of Encode, in hex. Two
// nodes with one project part, whatever their own parts, have one Hash.
func (p Project) Hash() string {
	sum := sha256.Sum256(p.Encode())
	return hex.EncodeToString(sum[:])
}
