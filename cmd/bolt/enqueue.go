package main

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/rs/zerolog"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/bolt-runner/bolt/store"
	"github.com/bolt-runner/bolt/taskdoc"
	"github.com/bolt-runner/bolt/taskpath"
)

func enqueue(args []string) error {
	f := newCommandFlags("enqueue", "timeout")
	fields := f.String("json", "", "further fields of the document, as a JSON object (Extended JSON allowed)")
	runAt := f.String("run-at", "", "do not start before this time: epoch seconds, or RFC 3339 such as 2026-12-24T18:00:00Z")
	timeout := f.String("timeout", "", "seconds the task may run")
	positional, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return fmt.Errorf("%w: give exactly one task name, such as bolt enqueue reports/daily_sales", errUsage)
	}
	name := positional[0]
	if err := taskpath.ValidateName(name); err != nil {
		return err
	}
	doc, err := buildDocument(name, *fields, *runAt, *timeout)
	if err != nil {
		return err
	}
	cfg, err := f.load()
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	uri := cfg.MongoURI
	if uri == "" {
		emb, err := openEmbedded(ctx, cfg, zerolog.New(io.Discard))
		if err != nil {
			return err
		}
		defer emb.Close()
		uri = emb.URI
	}
	st, err := store.Connect(ctx, uri, cfg.Database(), "")
	if err != nil {
		return err
	}
	defer st.Close(context.Background())
	id, err := st.Insert(ctx, doc)
	if err != nil {
		return err
	}
	if oid, ok := id.(bson.ObjectID); ok {
		fmt.Println(oid.Hex())
	} else {
		fmt.Println(id)
	}
	return nil
}

// buildDocument makes the task document from the command line. The task name and the
// --run-at and --timeout flags win over the same fields in --json.
func buildDocument(name, fields, runAt, timeout string) (bson.D, error) {
	doc := bson.D{}
	if fields != "" {
		if err := bson.UnmarshalExtJSON([]byte(fields), false, &doc); err != nil {
			return nil, fmt.Errorf("--json must be a JSON object: %w", err)
		}
	}
	set := func(key string, value any) {
		for i := range doc {
			if doc[i].Key == key {
				doc[i].Value = value
				return
			}
		}
		doc = append(doc, bson.E{Key: key, Value: value})
	}
	set(taskdoc.FieldTask, name)

	if runAt != "" {
		if secs, err := strconv.ParseInt(runAt, 10, 64); err == nil {
			set(taskdoc.FieldRunAt, secs)
		} else if secs, err := strconv.ParseFloat(runAt, 64); err == nil {
			set(taskdoc.FieldRunAt, secs)
		} else if t, err := time.Parse(time.RFC3339, runAt); err == nil {
			set(taskdoc.FieldRunAt, t)
		} else {
			return nil, fmt.Errorf("--run-at %q: give epoch seconds or an RFC 3339 time such as 2026-12-24T18:00:00Z", runAt)
		}
	}
	if timeout != "" {
		secs, err := strconv.ParseFloat(timeout, 64)
		if err != nil || secs <= 0 {
			return nil, fmt.Errorf("--timeout %q: give a number of seconds greater than 0", timeout)
		}
		set(taskdoc.FieldTimeout, secs)
	}
	return doc, nil
}
