package rubypreload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settleDelay is how long the watcher waits after the last change to a watched file
// before it restarts the preloader, so that a save in several steps restarts it once.
const settleDelay = 200 * time.Millisecond

// fileStamp identifies one version of a file. The inode catches a file replaced by
// renaming with the same modification time and size.
type fileStamp struct {
	exists  bool
	modTime time.Time
	size    int64
	inode   uint64
}

// stamp contains the fileStamps of the watched files, in order.
type stamp []fileStamp

// stampFiles returns the current stamp of paths. A file that cannot be read counts as
// missing, so that it changes the stamp when it comes back.
func stampFiles(paths []string) stamp {
	out := make(stamp, len(paths))
	for i, path := range paths {
		info, err := os.Stat(path)
		if err != nil {
			continue
		}
		out[i] = fileStamp{exists: true, modTime: info.ModTime(), size: info.Size()}
		if sys, ok := info.Sys().(*syscall.Stat_t); ok {
			out[i].inode = sys.Ino
		}
	}

	return out
}

func (s stamp) equal(other stamp) bool {
	return slices.EqualFunc(s, other, func(a, b fileStamp) bool {
		return a.exists == b.exists && a.modTime.Equal(b.modTime) && a.size == b.size && a.inode == b.inode
	})
}

// watch starts a goroutine that calls refresh when a watched file changes. It watches
// the files' folders, because editors and deploy tools often replace a file by renaming
// another onto it. A folder that does not exist yet is added when it appears in a
// watched folder, or when a preloader starts.
func (p *Preloader) watch(ctx context.Context) error {
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("creating file watcher: %w", err)
	}
	p.watcher = watcher
	p.watchedDirs = map[string]bool{}
	for _, path := range p.watched {
		p.watchedDirs[filepath.Dir(path)] = false
	}
	if err := p.addWatches(); err != nil {
		_ = watcher.Close()
		p.watcher = nil
		return err
	}

	p.watching.Add(1)
	go func() {
		defer p.watching.Done()
		defer watcher.Close()
		p.handleEvents(ctx, watcher)
	}()

	return nil
}

// addWatches watches each folder of a watched file that exists and is not watched yet.
// Call with p.mu held, or before the watcher goroutine starts.
func (p *Preloader) addWatches() error {
	if p.watcher == nil {
		return nil
	}
	for dir, added := range p.watchedDirs {
		if added {
			continue
		}
		err := p.watcher.Add(dir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("watching %s: %w", dir, err)
		}
		p.watchedDirs[dir] = true
	}

	return nil
}

func (p *Preloader) handleEvents(ctx context.Context, watcher *fsnotify.Watcher) {
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case event, ok := <-watcher.Events:
			if !ok {
				return
			}
			if p.watchedChange(event) {
				settle.Reset(settleDelay)
			}
		case err, ok := <-watcher.Errors:
			if !ok {
				return
			}
			p.log.Warn().Err(err).Msg("rubypreload: watching the boot files failed; changes are noticed at the next task")
		case <-settle.C:
			p.refresh()
		}
	}
}

// watchedChange reports whether event concerns a watched file. When the folder of a
// watched file appears, perhaps with the file in it, it starts watching the folder and
// reports a change.
func (p *Preloader) watchedChange(event fsnotify.Event) bool {
	name := filepath.Clean(event.Name)
	if slices.Contains(p.watched, name) {
		return true
	}
	if !event.Has(fsnotify.Create) {
		return false
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if _, isDir := p.watchedDirs[name]; !isDir {
		return false
	}
	if err := p.addWatches(); err != nil {
		p.log.Warn().Err(err).Msg("rubypreload: watching the boot files failed; changes are noticed at the next task")
	}

	return true
}

