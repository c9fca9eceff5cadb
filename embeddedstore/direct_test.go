package embeddedstore

import "net/url"

// directURI returns a URI that bypasses the gate and connects to FerretDB
// itself, for comparisons.
func directURI(s *Server) string {
	if s.upstreamNetwork == "unix" {
		return "mongodb://" + url.PathEscape(s.upstreamAddress) + "/"
	}
	return "mongodb://" + s.upstreamAddress + "/"
}
