# frozen_string_literal: true

# Runs one Bolt Ruby task. Bolt starts it as
#
#   ruby -e SCRIPT -- APP_DIR TASK_FILE CONSTANT BOOT_FILE [LOAD_DIR...]
#
# where SCRIPT is this file followed by the line "exit(BoltTaskRunner.main(ARGV))". The
# Ruby preloader (package rubypreload) embeds this file without that line and calls the
# steps itself.
#
# where BOOT_FILE may be empty and the LOAD_DIRs are absolute folders in load-path order.
# The task document arrives on stdin as relaxed MongoDB Extended JSON. The outcome is
# written as a JSON object to the file named by BOLT_RESULT_FILE:
#
#   {"success": true, "fields": {...}}
#   {"success": false, "ex": "Class: message", "backtrace": [...], "fields": {...}}
#
# "fields" contains the top-level keys that the task added to its document or changed.
# The exit status is 0 on success and 1 on failure, except that a signal such as the
# SIGTERM of a timeout still ends the process after the result is written. This script
# never writes to stdout, which belongs to the task.
#
# The work is split into BoltTaskRunner.boot, which prepares the application, and
# BoltTaskRunner.run_task, which runs one task, so that a long-lived process can boot
# once and fork for each task.
module BoltTaskRunner
  # Backtrace frames of this script (run with -e) and of Ruby's own require machinery,
  # which carry no information about the task.
  NOISE_FRAME = /\A(-e:\d+:|<internal:)/

  module_function

  # Reads everything from stdin before the application loads, so that application code
  # cannot consume the task document.
  def read_input
    $stdin.binmode
    $stdin.read.force_encoding(Encoding::UTF_8)
  end

  # Activates the application's Bundler setup when it has a Gemfile, adds the load-path
  # folders to $LOAD_PATH and loads the boot file if one is given.
  #
  # The load path comes before the boot file, so that the boot file can require the
  # application's own libraries. json and time are required only after Bundler's setup,
  # because a Gemfile may pin other versions of them.
  def boot(app_dir:, load_path:, boot_file:)
    gemfile = File.join(app_dir, "Gemfile")
    if File.file?(gemfile)
      # Bundler.setup does what require "bundler/setup" does, but raises on a missing
      # gem where bundler/setup prints to the terminal and exits. Bundler prints
      # progress such as "Resolving dependencies..." to stdout, which belongs to the
      # task, so it goes to stderr instead.
      ENV["BUNDLE_GEMFILE"] = gemfile
      require "bundler"
      with_stdout_on_stderr { Bundler.setup }
    end
    require "json"
    require "time"

    load_path.reverse_each do |dir|
      $LOAD_PATH.unshift(dir) unless $LOAD_PATH.include?(dir)
    end

    require boot_file unless boot_file.empty?
  end

  def with_stdout_on_stderr
    stdout = $stdout
    $stdout = $stderr
    yield
  ensure
    $stdout = stdout
  end

  # Loads the task file, calls the task's run method and returns the result object and
  # the exception that ended the task, if any.
  def run_task(task_file:, constant:, input:)
    document = parse_document(input)
    original = Marshal.load(Marshal.dump(document))

    begin
      define_namespace
      require task_file
      task_class = find_task(constant, task_file)
      call_run(task_class, document)
    rescue Exception => e
      return outcome(e, changed_fields(original, document))
    end

    [{ "success" => true, "fields" => changed_fields(original, document) }, nil]
  end

  # Defines Bolt::Tasks unless the application already has it, so that a task file can
  # use the compact form "class Bolt::Tasks::SendReport".
  def define_namespace
    Object.const_set(:Bolt, Module.new) unless Object.const_defined?(:Bolt)
    Bolt.const_set(:Tasks, Module.new) unless Bolt.const_defined?(:Tasks, false)
  end

  def parse_document(input)
    raise ArgumentError, "the task document on stdin is empty; Bolt must send a JSON object" if input.strip.empty?

    parsed = JSON.parse(input)
    unless parsed.is_a?(Hash)
      raise ArgumentError, "the task document on stdin must be a JSON object, not #{parsed.class}"
    end

    from_extended_json(parsed)
  end

  # Converts relaxed (and canonical) Extended JSON wrappers to Ruby values:
  # {"$oid": s} to the String s, {"$date": ...} to a UTC Time, {"$numberLong": s} and
  # {"$numberInt": s} to Integer, {"$numberDouble": s} to Float. Other wrappers, such as
  # $binary or $numberDecimal, stay Hashes with string keys.
  def from_extended_json(value)
    case value
    when Array
      value.map { |item| from_extended_json(item) }
    when Hash
      wrapped = from_wrapper(value)
      return wrapped unless wrapped.equal?(value)

      value.transform_values { |item| from_extended_json(item) }
    else
      value
    end
  end

  def from_wrapper(hash)
    return hash unless hash.size == 1

    key, inner = hash.first
    case key
    when "$oid"
      inner.is_a?(String) ? inner : hash
    when "$date"
      to_time(inner) || hash
    when "$numberLong", "$numberInt"
      inner.is_a?(String) ? Integer(inner, 10) : hash
    when "$numberDouble"
      inner.is_a?(String) ? to_float(inner) : hash
    else
      hash
    end
  rescue ArgumentError
    hash
  end

  def to_float(text)
    case text
    when "Infinity" then Float::INFINITY
    when "-Infinity" then -Float::INFINITY
    when "NaN" then Float::NAN
    else Float(text)
    end
  end

  def to_time(inner)
    case inner
    when String
      Time.iso8601(inner).utc
    when Integer
      Time.at(Rational(inner, 1000)).utc
    when Hash
      millis = inner["$numberLong"]
      inner.size == 1 && millis.is_a?(String) ? Time.at(Rational(Integer(millis, 10), 1000)).utc : nil
    end
  end

  def find_task(constant, task_file)
    Object.const_get(constant)
  rescue NameError => e
    error = NameError.new("#{plain_message(e)}: #{task_file} must define #{constant}", e.name)
    error.set_backtrace(e.backtrace)
    raise error
  end

  # Calls run(task: document) when run takes a task: keyword, or run({task: document})
  # when it takes one positional parameter, so that args[:task] works.
  def call_run(task_class, document)
    unless task_class.respond_to?(:run)
      raise NoMethodError.new("undefined method 'run' for #{task_class}: define def self.run(task:)", :run)
    end

    parameters = task_class.method(:run).parameters
    keywords = parameters.filter_map { |type, name| name if %i[key keyreq].include?(type) }
    positional = parameters.any? { |type, _| %i[req opt rest].include?(type) }

    if keywords.include?(:task) || (!positional && parameters.any? { |type, _| type == :keyrest })
      task_class.run(task: document)
    elsif positional
      task_class.run({ task: document })
    else
      task_class.run
    end
  end

  def changed_fields(original, document)
    fields = document.reject { |key, value| original.key?(key) && same?(original[key], value) }
    to_extended_json(fields)
  end

  # Compares through Marshal as well, so that values that are not equal to themselves,
  # such as Float::NAN, count as unchanged when the task left them alone.
  def same?(before, after)
    before == after || Marshal.dump(before) == Marshal.dump(after)
  rescue TypeError
    false
  end

  # Returns the result object for an exception and the exception to re-raise after the
  # result is written. exit(0) inside a task counts as success, but not before the task
  # ran (task_ran: false). A SignalException, such as the SIGTERM that a timeout sends,
  # is re-raised so that the process still ends by the signal.
  def outcome(error, fields, task_ran: true)
    if task_ran && error.is_a?(SystemExit) && error.success?
      return [{ "success" => true, "fields" => fields }, nil]
    end

    backtrace = (error.backtrace || []).reject { |frame| frame.match?(NOISE_FRAME) }
    result = {
      "success" => false,
      "ex" => "#{error.class}: #{plain_message(error)}",
      "backtrace" => backtrace,
      "fields" => fields,
    }
    [result, error.is_a?(SignalException) ? error : nil]
  end

  # Returns the message without the code snippet that error_highlight (Ruby 3.1) and
  # the suggestions that did_you_mean add to NameError messages, which span several
  # lines and point into this script for errors it raises.
  def plain_message(error)
    error.respond_to?(:original_message) ? error.original_message : error.message
  end

  # Converts a value back to something JSON can represent, as relaxed Extended JSON:
  # Time and Date to {"$date": ISO-8601} ({"$date": {"$numberLong": ms}} outside years
  # 1970 to 9999), non-finite Floats to {"$numberDouble": s}, binary Strings to $binary,
  # Symbols and other objects to their to_s.
  def to_extended_json(value)
    case value
    when Hash
      value.each_with_object({}) { |(key, item), out| out[key.to_s] = to_extended_json(item) }
    when Array
      value.map { |item| to_extended_json(item) }
    when String
      string_to_json(value)
    when Integer, true, false, nil
      value
    when Float
      value.finite? ? value : { "$numberDouble" => value.nan? ? "NaN" : (value.positive? ? "Infinity" : "-Infinity") }
    when Time
      time_to_json(value)
    else
      date_to_json(value) || value.to_s
    end
  end

  # Converts a DateTime exactly and a Date to midnight UTC; returns nil for other values.
  def date_to_json(value)
    return nil unless defined?(Date) && value.is_a?(Date)

    if defined?(DateTime) && value.is_a?(DateTime)
      time_to_json(value.to_time)
    else
      time_to_json(Time.utc(value.year, value.month, value.day))
    end
  end

  def string_to_json(value)
    utf8 = value.encoding == Encoding::UTF_8 ? value : value.dup.force_encoding(Encoding::UTF_8)
    return utf8 if utf8.valid_encoding?

    { "$binary" => { "base64" => [value].pack("m0"), "subType" => "00" } }
  end

  def time_to_json(time)
    time = time.getutc
    if time.year.between?(1970, 9999)
      { "$date" => time.iso8601(3) }
    else
      { "$date" => { "$numberLong" => ((time.to_r * 1000).floor).to_s } }
    end
  end

  def write_result(path, result)
    return if path.nil? || path.empty?

    File.write(path, JSON.generate(result))
  end

  def report_failure(result)
    warn("Bolt task failed: #{result['ex']}")
    result["backtrace"].each { |frame| warn("\tfrom #{frame}") }
  end

  # Runs the whole sequence and returns the exit status. Failures before the task runs,
  # such as a broken Gemfile or boot file, are recorded like the task's own.
  def main(argv)
    app_dir, task_file, constant, boot_file, *load_path = argv
    input = read_input

    result, signal =
      begin
        boot(app_dir: app_dir, load_path: load_path, boot_file: boot_file.to_s)
        run_task(task_file: task_file, constant: constant, input: input)
      rescue Exception => e
        require "json"
        outcome(e, {}, task_ran: false)
      end

    finish(result, signal)
  end

  # Writes the result file and returns the exit status. A signal that stopped the task is
  # raised again instead, so that the process ends by that signal.
  def finish(result, signal)
    write_result(ENV["BOLT_RESULT_FILE"], result)
    raise signal if signal
    return 0 if result["success"]

    report_failure(result)
    1
  end
end
