package embeddedstore

import (
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// unsupportedValues lists the values the store cannot keep, each nested
// somewhere different, with the field path the error must name.
var unsupportedValues = []struct {
	name  string
	doc   bson.D
	path  string
	value string
}{
	{"NaN", bson.D{{Key: "score", Value: math.NaN()}}, "score", "NaN"},
	{"+Infinity", bson.D{{Key: "limits", Value: bson.D{{Key: "max", Value: math.Inf(1)}}}}, "limits.max", "+Infinity"},
	{"-Infinity in array", bson.D{{Key: "samples", Value: bson.A{1.5, math.Inf(-1)}}}, "samples.1", "-Infinity"},
	{"Decimal128 in array of documents", bson.D{{Key: "lines", Value: bson.A{bson.D{{Key: "price", Value: bson.NewDecimal128(0, 1999)}}}}}, "lines.0.price", "Decimal128"},
}

func requireWriteError(t *testing.T, err error, path, value string) {
	t.Helper()
	require.Error(t, err)

	var writeErr mongo.WriteException
	require.True(t, errors.As(err, &writeErr), "want a write error, got %T: %v", err, err)
	require.Len(t, writeErr.WriteErrors, 1)
	assert.Equal(t, codeBadValue, writeErr.WriteErrors[0].Code)
	assert.Contains(t, writeErr.WriteErrors[0].Message, `"`+path+`"`)
	assert.Contains(t, writeErr.WriteErrors[0].Message, value)
	assert.Contains(t, writeErr.WriteErrors[0].Message, "cannot store")
}

func TestInsertRejectsUnsupportedValues(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	for _, tc := range unsupportedValues {
		_, err := tasks.InsertOne(ctx, append(bson.D{{Key: "_id", Value: tc.name}}, tc.doc...))
		requireWriteError(t, err, tc.path, tc.value)

		// The same client, and so the same connection pool, goes on working.
		_, err = tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: tc.name}, {Key: "score", Value: 1.5}})
		require.NoError(t, err, tc.name)
	}

	count, err := tasks.CountDocuments(ctx, bson.D{})
	require.NoError(t, err)
	assert.Equal(t, int64(len(unsupportedValues)), count)
}

func TestInsertManyKeepsAcceptableDocuments(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")

	docs := []any{
		bson.D{{Key: "_id", Value: 0}},
		bson.D{{Key: "_id", Value: 1}, {Key: "score", Value: math.NaN()}},
		bson.D{{Key: "_id", Value: 2}},
		bson.D{{Key: "_id", Value: 0}}, // duplicate key, reported by FerretDB
		bson.D{{Key: "_id", Value: 4}, {Key: "score", Value: math.Inf(1)}},
		bson.D{{Key: "_id", Value: 5}},
	}

	t.Run("ordered", func(t *testing.T) {
		collection := tasks.Database().Collection("ordered")
		_, err := collection.InsertMany(ctx, docs)

		var bulkErr mongo.BulkWriteException
		require.True(t, errors.As(err, &bulkErr), "want a bulk write error, got %v", err)
		require.Len(t, bulkErr.WriteErrors, 1)
		assert.Equal(t, 1, bulkErr.WriteErrors[0].Index)
		assert.Contains(t, bulkErr.WriteErrors[0].Message, `"score"`)

		ids := storedIDs(t, collection)
		assert.Equal(t, []int32{0}, ids, "an ordered insert stops at the first rejected document")
	})

	t.Run("unordered", func(t *testing.T) {
		collection := tasks.Database().Collection("unordered")
		_, err := collection.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))

		var bulkErr mongo.BulkWriteException
		require.True(t, errors.As(err, &bulkErr), "want a bulk write error, got %v", err)
		require.Len(t, bulkErr.WriteErrors, 3)
		assert.Equal(t, 1, bulkErr.WriteErrors[0].Index)
		assert.Equal(t, 3, bulkErr.WriteErrors[1].Index)
		assert.True(t, mongo.IsDuplicateKeyError(bulkErr.WriteErrors[1]), "FerretDB's error keeps its code: %v", bulkErr.WriteErrors[1])
		assert.Equal(t, 4, bulkErr.WriteErrors[2].Index)
		assert.Contains(t, bulkErr.WriteErrors[2].Message, "+Infinity")

		ids := storedIDs(t, collection)
		assert.Equal(t, []int32{0, 2, 5}, ids, "an unordered insert keeps every acceptable document")
	})
}

func storedIDs(t *testing.T, collection *mongo.Collection) []int32 {
	t.Helper()
	ctx := testContext(t, time.Minute)

	cursor, err := collection.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	require.NoError(t, err)
	var docs []struct {
		ID int32 `bson:"_id"`
	}
	require.NoError(t, cursor.All(ctx, &docs))

	ids := make([]int32, len(docs))
	for i, doc := range docs {
		ids[i] = doc.ID
	}
	return ids
}

func TestUpdateRejectsUnsupportedValues(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	tasks := connect(t, server.URI()).Database("bolt_test").Collection("tasks")
	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}, {Key: "score", Value: 1.0}})
	require.NoError(t, err)

	for _, tc := range unsupportedValues {
		_, err := tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: tc.doc}})
		requireWriteError(t, err, "$set."+tc.path, tc.value)

		_, err = tasks.ReplaceOne(ctx, bson.D{{Key: "_id", Value: 1}}, tc.doc)
		requireWriteError(t, err, tc.path, tc.value)

		// findAndModify reports a command error, as MongoDB does.
		err = tasks.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: tc.doc}}).Err()
		requireServerError(t, err, codeBadValue)
		assert.Contains(t, err.Error(), `"$set.`+tc.path+`"`)

		_, err = tasks.UpdateOne(ctx, bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "$set", Value: bson.D{{Key: "score", Value: 2.5}}}})
		require.NoError(t, err, tc.name)
	}

	var doc bson.M
	require.NoError(t, tasks.FindOne(ctx, bson.D{{Key: "_id", Value: 1}}).Decode(&doc))
	assert.Equal(t, bson.M{"_id": int32(1), "score": 2.5}, doc, "no rejected update may have changed the document")
}

func TestQueryWithNaNKeepsConnection(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)

	// One connection only, so a closed connection would show at once.
	client := connect(t, server.URI()+"?maxPoolSize=1")
	tasks := client.Database("bolt_test").Collection("tasks")
	_, err := tasks.InsertOne(ctx, bson.D{{Key: "_id", Value: 1}})
	require.NoError(t, err)

	_, err = tasks.Find(ctx, bson.D{{Key: "score", Value: math.NaN()}})
	requireServerError(t, err, codeBadValue)
	assert.Contains(t, err.Error(), `"filter.score"`)

	_, err = tasks.DeleteOne(ctx, bson.D{{Key: "score", Value: bson.NewDecimal128(0, 1)}})
	requireWriteError(t, err, "q.score", "Decimal128")

	count, err := tasks.CountDocuments(ctx, bson.D{})
	require.NoError(t, err)
	assert.Equal(t, int64(1), count)
}

func TestBulkUpdateKeepsAcceptableStatements(t *testing.T) {
	t.Parallel()

	server := startStore(t)
	ctx := testContext(t, time.Minute)
	db := connect(t, server.URI()).Database("bolt_test")

	setScore := func(id int, score any) mongo.WriteModel {
		return mongo.NewUpdateOneModel().
			SetFilter(bson.D{{Key: "_id", Value: id}}).
			SetUpdate(bson.D{{Key: "$set", Value: bson.D{{Key: "score", Value: score}}}})
	}
	models := []mongo.WriteModel{setScore(1, 1.0), setScore(2, math.NaN()), setScore(3, 3.0)}

	for _, ordered := range []bool{true, false} {
		collection := db.Collection(fmt.Sprintf("ordered_%t", ordered))
		_, err := collection.InsertMany(ctx, []any{bson.D{{Key: "_id", Value: 1}}, bson.D{{Key: "_id", Value: 2}}, bson.D{{Key: "_id", Value: 3}}})
		require.NoError(t, err)

		result, err := collection.BulkWrite(ctx, models, options.BulkWrite().SetOrdered(ordered))
		var bulkErr mongo.BulkWriteException
		require.True(t, errors.As(err, &bulkErr), "want a bulk write error, got %v", err)
		require.Len(t, bulkErr.WriteErrors, 1)
		assert.Equal(t, 1, bulkErr.WriteErrors[0].Index)
		assert.Contains(t, bulkErr.WriteErrors[0].Message, `"$set.score"`)

		wantModified := int64(2)
		if ordered {
			wantModified = 1
		}
		assert.Equal(t, wantModified, result.ModifiedCount, "ordered=%t", ordered)

		count, err := collection.CountDocuments(ctx, bson.D{{Key: "score", Value: bson.D{{Key: "$exists", Value: true}}}})
		require.NoError(t, err)
		assert.Equal(t, wantModified, count, "ordered=%t", ordered)
	}
}
