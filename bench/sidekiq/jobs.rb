# The Sidekiq side of the comparison: a no-op job and a 20 ms job, with Redis at REDIS_URL.
require "sidekiq"

redis = { url: ENV.fetch("REDIS_URL") }
Sidekiq.configure_server { |config| config.redis = redis }
Sidekiq.configure_client { |config| config.redis = redis }

class NoopJob
  include Sidekiq::Job

  def perform; end
end

class Sleep20Job
  include Sidekiq::Job

  def perform
    sleep 0.02
  end
end
