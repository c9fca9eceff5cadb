package embeddedstore

import (
	"database/sql"
	"fmt"
	"path/filepath"

	"github.com/rs/zerolog"

	// The SQLite driver FerretDB itself uses; importing it here makes the dependency explicit.
	_ "modernc.org/sqlite"
)

// idIndexer adds to each collection's table an index on the expression FerretDB's SQL
// uses to look documents up by _id.
//
// FerretDB v1.24 creates its unique _id index on `_ferretdb_sjson->"_id"` but queries,
// updates and deletes by `_ferretdb_sjson->'$._id'`, which SQLite does not match to that
// index, so every lookup by _id scanned the table. With this index a drain of 10,000
// tasks ran about 8 times faster on a 2-core machine (one run each, see
// docs/benchmarks.md).
type idIndexer struct {
	dir  string
	log  zerolog.Logger
	done map[namespace]bool // guarded by Server.writeMu
}

// ensure creates the index for ns once the collection exists. The caller holds the write
// lock, so no other write of the gate runs meanwhile. A failure is logged and retried at
// the next insert: the index only makes lookups faster.
func (x *idIndexer) ensure(ns namespace) {
	if x.done[ns] {
		return
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(x.dir, ns.db+".sqlite")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		x.log.Warn().Err(err).Str("database", ns.db).Msg("embedded store: opening SQLite file for the _id index failed")
		return
	}
	defer db.Close()

	var table string
	err = db.QueryRow(`SELECT table_name FROM _ferretdb_collections WHERE name = ?`, ns.collection).Scan(&table)
	if err != nil {
		x.log.Debug().Err(err).Str("collection", ns.collection).Msg("embedded store: collection table not found for the _id index")
		return
	}
	statement := fmt.Sprintf(`CREATE INDEX IF NOT EXISTS %q ON %q (_ferretdb_sjson->'$._id')`, table+"__id_path", table)
	if _, err := db.Exec(statement); err != nil {
		x.log.Warn().Err(err).Str("collection", ns.collection).Msg("embedded store: creating the _id index failed")
		return
	}
	x.done[ns] = true
}
