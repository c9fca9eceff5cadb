# Forks one child per task, at most CONCURRENCY at a time, and waits for all of them: the
# upper bound for a runner that starts a forked Ruby process per task. Each child exits
# through Ruby's normal exit path (at_exit handlers, finalizers), as a task's child does.
#
# Usage: ruby fork_loop.rb TASKS CONCURRENCY
total, concurrency = ARGV.map { |arg| Integer(arg) }
running = 0
total.times do
  if running == concurrency
    Process.wait
    running -= 1
  end
  fork { exit 0 }
  running += 1
end
running.times { Process.wait }
