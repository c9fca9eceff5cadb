# A Ruby task: Bolt loads this file in a fresh process and calls Bolt::Tasks::Greet.run
# with the whole task document as a Hash with string keys.
module Bolt
  module Tasks
    module Greet
      def self.run(task:)
        name = task.fetch("name", "world")
        puts "Hello, #{name}! (#{APP_NAME}, task #{task['_id']})"
        # Fields added to the Hash are handed back to Bolt and shown in the notification.
        task["greeting"] = "Hello, #{name}!"
      end
    end
  end
end
