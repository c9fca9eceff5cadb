# Sleeps 20 ms, as the Sidekiq and Celery jobs of the comparison do.
class Bolt::Tasks::RubySleep20
  def self.run(task:)
    sleep 0.02
  end
end
