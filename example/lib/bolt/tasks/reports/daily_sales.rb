# A namespaced Ruby task: reports/daily_sales is Bolt::Tasks::Reports::DailySales.
# It raises when the document has no day, which Bolt records as a failure with the
# exception and its backtrace.
module Bolt
  module Tasks
    module Reports
      module DailySales
        def self.run(task:)
          day = task["day"] or raise ArgumentError, "daily_sales needs a day field, such as \"2026-12-04\""
          total = task.fetch("orders", []).sum { |order| order.fetch("amount", 0) }
          task["total"] = total
          puts "Sales on #{day}: #{total}"
        end
      end
    end
  end
end
