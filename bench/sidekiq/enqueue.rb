# Pushes COUNT jobs of JOB_CLASS (NoopJob or Sleep20Job) in batches of 1,000.
#
# Usage: REDIS_URL=redis://127.0.0.1:PORT ruby enqueue.rb JOB_CLASS COUNT
require_relative "jobs"

job_class = Object.const_get(ARGV.fetch(0))
count = Integer(ARGV.fetch(1))
count.times.each_slice(1000) do |batch|
  Sidekiq::Client.push_bulk("class" => job_class, "args" => Array.new(batch.size) { [] })
end
