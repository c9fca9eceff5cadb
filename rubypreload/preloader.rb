# Bolt's Ruby preloader. It loads an application once and forks one child per task.
# Bolt starts it as
#
#   ruby -e SCRIPT -- APP_DIR BOOT_FILE [LOAD_DIR...]
#
# where SCRIPT is module BoltTaskRunner (rubyrunner/runner.rb) followed by this file, and
# BOOT_FILE may be empty. File descriptor 3 is a SOCK_SEQPACKET Unix socket to Bolt, and
# every message on it is one JSON object in one packet.
#
# The preloader sends one of
#
#   {"event": "ready", "pid": 123}
#   {"event": "boot_failed", "ex": "Class: message", "backtrace": [...]}
#
# after booting. Then Bolt sends requests, and the preloader replies:
#
#   run:  {"op": "run", "id": 7, "task": "name", "task_file": "/abs.rb", "constant": "Bolt::Tasks::X",
#          "env": {"NAME": "value"}, "unset_env": ["NAME"]}
#         with SCM_RIGHTS carrying the task's stdin, stdout and stderr, in that order.
#         Reply {"event": "started", "id": 7, "pid": 456} after the fork, or
#         {"event": "start_failed", "id": 7, "ex": "..."} when the fork failed, and
#         {"event": "exited", "id": 7, "status": 0, "signal": 0} when the child has exited.
#         The child is left unreaped, so that its process ID, which is also its process
#         group ID, cannot be reused while Bolt kills what the task left in the group.
#   reap: {"op": "reap", "id": 7} reaps the exited child.
#
# The preloader exits when Bolt closes the socket, and kills the process groups of the
# children it still has.
module BoltPreloader
  CONTROL_FD = 3
  MAX_MESSAGE = 1 << 20

  # Linux constants: prctl(2) and waitid(2), as in <sys/prctl.h> and <sys/wait.h>.
  PR_SET_PDEATHSIG = 1
  P_PID = 1
  WNOHANG = 1
  WEXITED = 4
  WNOWAIT = 0x01000000
  CLD_EXITED = 1

  # Offsets in Linux's siginfo_t for SIGCHLD on the common architectures (x86, Arm,
  # RISC-V): si_code after si_signo and si_errno, then si_pid, si_uid and si_status.
  # NOTE: MIPS swaps si_errno and si_code, so this layout is wrong there.
  SIGINFO_SIZE = 128
  SIGINFO_CODE = 8
  SIGINFO_PID = 16
  SIGINFO_STATUS = 24

  # Signals whose handlers the preloader changes; a child restores them first.
  TRAPPED_SIGNALS = %w[CHLD INT].freeze

  # Maximum size of the boot failure message and backtrace that the preloader reports.
  MAX_EX_BYTES = 16 << 10
  MAX_FRAMES = 200

  module_function

  def main(argv)
    app_dir, boot_file, *load_path = argv
    require "socket"
    control = Socket.for_fd(CONTROL_FD)

    begin
      BoltTaskRunner.boot(app_dir: app_dir, load_path: load_path, boot_file: boot_file.to_s)
    rescue Exception => e
      require "json"
      send_message(control, boot_failure(e))
      return 1
    end

    require "json"
    require "fiddle"
    # ps shows this title in place of the whole script, which Ruby got with -e.
    $0 = "bolt preloader #{app_dir}"
    # Garbage collected now, the boot's leftovers are not copied into every child, and
    # each child's exit has fewer objects to finalize.
    GC.start
    Server.new(control).serve
    0
  end

  def boot_failure(error)
    backtrace = (error.backtrace || []).reject { |frame| frame.match?(BoltTaskRunner::NOISE_FRAME) }
    ex = "#{error.class}: #{BoltTaskRunner.plain_message(error)}"
    ex = "#{ex.byteslice(0, MAX_EX_BYTES).scrub} [cut]" if ex.bytesize > MAX_EX_BYTES
    { "event" => "boot_failed", "ex" => ex, "backtrace" => backtrace.first(MAX_FRAMES) }
  end

  def send_message(control, message)
    control.sendmsg(JSON.generate(message))
  end

  # Serves requests from Bolt until it closes the socket.
  class Server
    def initialize(control)
      @control = control
      @pid = Process.pid
      @running = {} # pid => request id, children that have not exited
      @exited = {}  # request id => pid, children that have exited and wait for reap
      @wake_reader, @wake_writer = IO.pipe

      libc = Fiddle::Handle::DEFAULT
      int = Fiddle::TYPE_INT
      long = Fiddle::TYPE_LONG
      @prctl = Fiddle::Function.new(libc["prctl"], [int, long, long, long, long], int)
      @waitid = Fiddle::Function.new(libc["waitid"], [int, int, Fiddle::TYPE_VOIDP, int], int)
      @siginfo = Fiddle::Pointer.malloc(SIGINFO_SIZE, Fiddle::RUBY_FREE)
    end

    def serve
      # A terminal's Ctrl-C reaches Bolt, which stops tasks itself; the preloader ends
      # when Bolt closes the socket.
      trap("INT", "IGNORE")
      trap("CHLD") { @wake_writer.write_nonblock(".", exception: false) }
      BoltPreloader.send_message(@control, "event" => "ready", "pid" => @pid)

      loop do
        readable, = IO.select([@control, @wake_reader])
        if readable.include?(@wake_reader)
          @wake_reader.read_nonblock(4096, exception: false)
          report_exits
        end
        next unless readable.include?(@control)

        data, _address, _flags, *controls = @control.recvmsg(MAX_MESSAGE, 0, nil, scm_rights: true)
        break if data.nil? || data.empty?

        handle(JSON.parse(data), controls.flat_map(&:unix_rights).compact)
      end
    ensure
      kill_children
    end

    def handle(request, ios)
      case request["op"]
      when "run"
        start_child(request, ios)
      when "reap"
        pid = @exited.delete(request["id"])
        Process.waitpid(pid) if pid
      else
        ios.each(&:close)
        warn("bolt preloader: unknown request #{request['op'].inspect} ignored")
      end
    end

    def start_child(request, ios)
      id = request["id"]
      unless ios.size == 3
        ios.each(&:close)
        return BoltPreloader.send_message(@control, "event" => "start_failed", "id" => id,
                                                    "ex" => "expected 3 file descriptors, got #{ios.size}")
      end

      begin
        pid = fork { run_child(request, *ios) }
      rescue SystemCallError => e
        return BoltPreloader.send_message(@control, "event" => "start_failed", "id" => id, "ex" => e.message)
      ensure
        ios.each(&:close)
      end

      # The child calls setpgid itself as well. Whichever call runs first, the group exists
      # before Bolt receives the pid, so Bolt can always signal the group.
      begin
        Process.setpgid(pid, pid)
      rescue SystemCallError
        nil
      end
      @running[pid] = id
      BoltPreloader.send_message(@control, "event" => "started", "id" => id, "pid" => pid)
    end

    # Reports each child that has exited, leaving it unreaped (WNOWAIT) until Bolt sends reap.
    def report_exits
      @running.keys.each do |pid|
        @siginfo[0, SIGINFO_SIZE] = "\0" * SIGINFO_SIZE
        next unless @waitid.call(P_PID, pid, @siginfo, WEXITED | WNOHANG | WNOWAIT).zero?
        next unless int_at(SIGINFO_PID) == pid

        id = @running.delete(pid)
        @exited[id] = pid
        exited = int_at(SIGINFO_CODE) == CLD_EXITED
        status = int_at(SIGINFO_STATUS)
        BoltPreloader.send_message(@control, "event" => "exited", "id" => id,
                                             "status" => exited ? status : -1, "signal" => exited ? 0 : status)
      end
    end

    def int_at(offset)
      @siginfo[offset, 4].unpack1("l")
    end

    def kill_children
      (@running.keys + @exited.values).each do |pid|
        Process.kill(:KILL, -pid)
      rescue SystemCallError
        nil
      end
      (@running.keys + @exited.values).each do |pid|
        Process.waitpid(pid)
      rescue SystemCallError
        nil
      end
    end

    # Runs in the forked child: detaches it from the preloader and runs the task the way
    # BoltTaskRunner.main does after booting.
    def run_child(request, stdin, stdout, stderr)
      TRAPPED_SIGNALS.each { |signal| trap(signal, "DEFAULT") }
      Process.setpgid(0, 0)
      # Fork clears the parent-death signal. Setting it again kills the task when the
      # preloader dies; the check after it covers a preloader that died before the call.
      @prctl.call(PR_SET_PDEATHSIG, Signal.list.fetch("KILL"), 0, 0, 0)
      exit!(1) if Process.ppid != @pid

      [@control, @wake_reader, @wake_writer].each(&:close)
      STDIN.reopen(stdin)
      STDOUT.reopen(stdout)
      STDERR.reopen(stderr)
      [stdin, stdout, stderr].each(&:close)
      $stdin = STDIN
      $stdout = STDOUT
      $stderr = STDERR

      $0 = "bolt task #{request['task']}"

      result, signal =
        begin
          request.fetch("env").each { |name, value| ENV[name] = value }
          request.fetch("unset_env").each { |name| ENV.delete(name) }
          input = BoltTaskRunner.read_input
          BoltTaskRunner.run_task(task_file: request.fetch("task_file"), constant: request.fetch("constant"),
                                  input: input)
        rescue Exception => e
          BoltTaskRunner.outcome(e, {}, task_ran: false)
        end
      # exit rather than exit! runs at_exit handlers and finalizers (Tempfile's, for
      # example) and flushes files the task left open, as in a fresh Ruby. That teardown
      # walks the whole heap, which costs a few milliseconds per task and more for
      # applications with a large heap.
      exit(BoltTaskRunner.finish(result, signal))
    end
  end
end

exit(BoltPreloader.main(ARGV))
