package embeddedstore

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// debianPython is the interpreter whose python3-pymongo package (3.11 on
// Debian 12) serves as the third-party client.
const debianPython = "/usr/bin/python3"

func TestPymongoClient(t *testing.T) {
	t.Parallel()

	if err := exec.Command(debianPython, "-c", "import pymongo").Run(); err != nil {
		message := "pymongo is not available to " + debianPython + " (" + err.Error() + "); install it with: apt-get install -y python3-pymongo"
		if inCI() {
			t.Fatal(message)
		}
		t.Skip(message)
	}

	server := startStore(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	script, err := filepath.Abs(filepath.Join("testdata", "pymongo_watch.py"))
	require.NoError(t, err)
	output, err := exec.CommandContext(ctx, debianPython, script, server.URI()).CombinedOutput()
	t.Logf("pymongo output:\n%s", output)
	require.NoError(t, err)
	assert.Contains(t, string(output), "watch: saw 3 inserts in order")
	assert.Contains(t, string(output), "resume: saw the update and the delete")
	assert.Contains(t, string(output), "values: NaN rejected")
}
