package main

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestParseStatNameWithBrackets(t *testing.T) {
	line := "4242 (bolt (x) y) S 17 4242 4242 0 -1 4194560 900 0 0 0 250 75 3 4 20 0 9 0 100 0 0\n"
	st, err := parseStat(line)
	require.NoError(t, err)
	require.Equal(t, 17, st.ppid)
	require.Equal(t, int64(325), st.cpuTicks, "utime 250 + stime 75, children's times left out")
}

func TestParseStatRejectsShortLine(t *testing.T) {
	_, err := parseStat("1 (x) S 0 1")
	require.Error(t, err)
}

func TestPercentileNearestRank(t *testing.T) {
	values := []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}
	require.Equal(t, 5.0, percentile(values, 50))
	require.Equal(t, 9.0, percentile(values, 90))
	require.Equal(t, 10.0, percentile(values, 99))
	require.Equal(t, 10.0, percentile(values, 100))
	require.Equal(t, 0.0, percentile(nil, 50))
	require.Equal(t, []float64{5, 1, 4, 2, 3, 10, 9, 8, 7, 6}, values, "input left unsorted")
}

func TestMedianOddAndEven(t *testing.T) {
	identity := func(v float64) float64 { return v }
	require.Equal(t, 2.0, median([]float64{3, 1, 2}, identity))
	require.Equal(t, 2.5, median([]float64{4, 1, 3, 2}, identity))
}

func TestReadTaskLogCountsOutcomes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flagella.log")
	earlier := "2026-12-04T10:00:00Z INF task finished component=executor success=true\n"
	content := "2026-12-04T10:00:01.5Z INF task claimed component=executor task=noop\n" +
		"2026-12-04T10:00:01.6Z INF task finished component=executor duration=3ms success=true task=noop\n" +
		"2026-12-04T10:00:01.7Z INF task claimed component=executor task=noop\n" +
		"2026-12-04T10:00:02Z WRN task failed component=executor success=false\n" +
		"2026-12-04T10:00:03.25Z INF task finished component=executor success=true task=noop\n"
	require.NoError(t, os.WriteFile(path, []byte(earlier+content), 0o644))

	tally, err := readTaskLog(path, int64(len(earlier)))
	require.NoError(t, err)
	require.Equal(t, 2, tally.finished)
	require.Equal(t, 1, tally.failed)
	require.Equal(t, 1750*time.Millisecond, tally.lastFinished.Sub(tally.firstClaimed))
}

func TestReadRecordsAcceptsCommaDecimal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "records")
	require.NoError(t, os.WriteFile(path, []byte("a1 1796000000.250000\nb2 1796000001,500000\nincomplete"), 0o644))

	started, err := readRecords(path)
	require.NoError(t, err)
	require.Len(t, started, 2)
	require.Equal(t, time.Unix(1796000000, 250e6), started["a1"])
	require.Equal(t, time.Unix(1796000001, 500e6), started["b2"])
}

// buildOpMsg builds an OP_MSG whose body is doc, after an optional kind 1 document sequence.
func buildOpMsg(t *testing.T, doc bson.D, withSequence bool) []byte {
	t.Helper()
	body, err := bson.Marshal(doc)
	require.NoError(t, err)
	message := make([]byte, 20)
	binary.LittleEndian.PutUint32(message[12:], opMsg)
	if withSequence {
		item, err := bson.Marshal(bson.D{{Key: "x", Value: 1}})
		require.NoError(t, err)
		identifier := []byte("documents\x00")
		size := make([]byte, 4)
		binary.LittleEndian.PutUint32(size, uint32(4+len(identifier)+len(item)))
		message = append(message, 1)
		message = append(message, size...)
		message = append(message, identifier...)
		message = append(message, item...)
	}
	message = append(message, 0)
	message = append(message, body...)
	binary.LittleEndian.PutUint32(message[:4], uint32(len(message)))
	return message
}

func TestCommandNameFromOpMsg(t *testing.T) {
	require.Equal(t, "getMore", commandName(buildOpMsg(t, bson.D{{Key: "getMore", Value: int64(1)}, {Key: "$db", Value: "x"}}, false)))
	require.Equal(t, "insert", commandName(buildOpMsg(t, bson.D{{Key: "insert", Value: "task_queue"}}, true)))

	query := make([]byte, 16)
	binary.LittleEndian.PutUint32(query[12:], opQuery)
	require.Equal(t, "OP_QUERY", commandName(query))
}

func TestCommandCounterRelaysAndCounts(t *testing.T) {
	upstream, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer upstream.Close()
	go func() {
		conn, err := upstream.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		for {
			message, err := readMessage(conn)
			if err != nil {
				return
			}
			_, _ = conn.Write(message) // echo, as a reply the client can read back
		}
	}()

	counter, err := startCommandCounter(upstream.Addr().String())
	require.NoError(t, err)
	defer counter.Close()
	conn, err := net.Dial("tcp", counter.listener.Addr().String())
	require.NoError(t, err)
	defer conn.Close()

	for _, name := range []string{"find", "find", "update"} {
		sent := buildOpMsg(t, bson.D{{Key: name, Value: "task_queue"}}, false)
		_, err := conn.Write(sent)
		require.NoError(t, err)
		echoed := make([]byte, len(sent))
		_, err = io.ReadFull(conn, echoed)
		require.NoError(t, err)
		require.Equal(t, sent, echoed)
	}
	require.Equal(t, map[string]int{"find": 2, "update": 1}, counter.Counts())
}
