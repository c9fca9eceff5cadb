# Does nothing: the benchmark measures the cost of running a Ruby task.
class Bolt::Tasks::RubyNoop
  def self.run(task:) = nil
end
