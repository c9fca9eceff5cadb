package config

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func env(values map[string]string) func(string) string {
	return func(k string) string { return values[k] }
}

func TestPrecedenceFlagOverEnvOverFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, FileName), []byte("# comment\nthrottle = 2\ntimeout = 10\nlog_level = warn\n"), 0o644))

	cfg, err := Load(map[string]string{"app": dir, "throttle": "4"}, env(map[string]string{"BOLT_TIMEOUT": "20"}))
	require.NoError(t, err)
	require.Equal(t, 4, cfg.Throttle)
	require.Equal(t, 20*time.Second, cfg.Timeout)
	require.Equal(t, "warn", cfg.LogLevel)
	require.Equal(t, "development", cfg.Env)
	require.Equal(t, "flag --throttle", cfg.Sources["throttle"])
	require.Equal(t, "env BOLT_TIMEOUT", cfg.Sources["timeout"])
	require.Equal(t, "file", cfg.Sources["log_level"])
	require.Equal(t, "bolt_development", cfg.Database())
}

func TestInvalidSettingNamesItAndAllowed(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(map[string]string{"app": dir}, env(map[string]string{"CURRENT_ENV": "staging"}))
	require.ErrorContains(t, err, `env = "staging"`)
	require.ErrorContains(t, err, "production, development, test")

	_, err = Load(map[string]string{"app": dir, "throttle": "0"}, env(nil))
	require.ErrorContains(t, err, "throttle")
}

func TestUnknownFileSettingIsAnError(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, FileName), []byte("throtle = 2\n"), 0o644))
	_, err := Load(map[string]string{"app": dir}, env(nil))
	require.ErrorContains(t, err, "throtle")
}

func TestDescribeMasksPasswords(t *testing.T) {
	dir := t.TempDir()
	cfg, err := Load(map[string]string{"app": dir, "smtp_url": "smtp://user:secret@127.0.0.1:25", "mongo_uri": "mongodb://u:hunter2@127.0.0.1/"}, env(nil))
	require.NoError(t, err)
	for _, line := range cfg.Describe() {
		require.NotContains(t, line, "secret")
		require.NotContains(t, line, "hunter2")
	}
}

func TestRubyPreloadSetting(t *testing.T) {
	dir := t.TempDir()

	cfg, err := Load(map[string]string{"app": dir}, env(nil))
	require.NoError(t, err)
	require.True(t, cfg.RubyPreload, "preloading is on by default")
	require.Contains(t, cfg.Describe(), "ruby_preload = true  # default")

	cfg, err = Load(map[string]string{"app": dir}, env(map[string]string{"BOLT_RUBY_PRELOAD": "false"}))
	require.NoError(t, err)
	require.False(t, cfg.RubyPreload)

	_, err = Load(map[string]string{"app": dir, "ruby_preload": "sometimes"}, env(nil))
	require.ErrorContains(t, err, `ruby_preload = "sometimes"`)
	require.ErrorContains(t, err, "want true or false")
}
