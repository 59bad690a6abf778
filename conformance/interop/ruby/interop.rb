# Interop cases with the Ruby Bunny client (Debian ruby-bunny).
# Prints one "PASS bunny <case>" / "FAIL bunny <case>: <reason>" line per case.
require "bunny"
require "bigdecimal"
require "securerandom"
require "timeout"
require "logger"

CLIENT = "bunny"
HOST = ENV.fetch("AMQP_HOST", "127.0.0.1")
PORT = Integer(ENV.fetch("AMQP_PORT", "5672"))
USER = ENV.fetch("AMQP_USER", "guest")
PASS = ENV.fetch("AMQP_PASS", "guest")
VHOST = ENV.fetch("AMQP_VHOST", "/")
WAIT = Float(ENV.fetch("INTEROP_WAIT", "5"))
CASE_LIMIT = Integer(ENV.fetch("INTEROP_CASE_LIMIT", "12"))
SUFFIX = SecureRandom.hex(5)
LARGE = (0...(1 << 20)).map { |i| (i * 7 + (i >> 10)) & 0xff }.pack("C*")

class CheckFailed < StandardError; end

def check(cond, msg)
  raise CheckFailed, msg unless cond
end

def name(kind)
  "interop.#{kind}.#{SUFFIX}"
end

def connect(password = PASS)
  c = Bunny.new(host: HOST, port: PORT, user: USER, pass: password, vhost: VHOST,
                connection_timeout: WAIT, read_timeout: WAIT, write_timeout: WAIT,
                continuation_timeout: (WAIT * 1000).to_i, heartbeat: 30,
                automatically_recover: false, logger: Logger.new(IO::NULL))
  c.start
  c
end

def session
  conn = connect
  begin
    yield conn, conn.create_channel
  ensure
    begin
      Timeout.timeout(WAIT) { conn.close }
    rescue StandardError, Timeout::Error
      nil
    end
  end
end

# wait_for polls the block until it is truthy or WAIT seconds pass.
def wait_for
  deadline = Time.now + WAIT
  until (v = yield)
    return nil if Time.now > deadline
    sleep 0.01
  end
  v
end

def consume(ch, queue, n)
  got = Queue.new
  consumer = ch.queue(queue, passive: true).subscribe(manual_ack: false) { |di, props, body| got << [di, props, body] }
  out = []
  deadline = Time.now + WAIT
  while out.size < n
    left = deadline - Time.now
    break if left <= 0
    begin
      out << Timeout.timeout(left) { got.pop }
    rescue Timeout::Error
      break
    end
  end
  consumer.cancel
  check(out.size >= n, "expected #{n} deliveries from #{queue}, got #{out.size}")
  out
end

def assert_empty(ch, queue)
  _, _, body = ch.basic_get(queue, manual_ack: false)
  check(body.nil?, "queue #{queue} should be empty")
end

def declare_queue(ch, q)
  ch.queue_declare(q, durable: false, auto_delete: false)
end

def case_connect
  c = connect
  ch = c.create_channel
  check(ch.open?, "channel not open")
  c.close
end

def case_auth_refused
  begin
    c = connect(PASS + "-wrong")
  rescue Bunny::AuthenticationFailureError
    return
  rescue Bunny::PossibleAuthenticationFailureError => e
    raise CheckFailed, "refused only as a possible authentication failure: #{e}"
  end
  c.close
  raise CheckFailed, "connection with a wrong password succeeded"
end

def exchange_case(kind, bindings, publishes, expect)
  ex = name("ex-#{kind}")
  session do |_conn, ch|
    ch.exchange_declare(ex, kind, durable: false, auto_delete: false)
    queues = {}
    begin
      bindings.each do |qkey, rk, args|
        unless queues[qkey]
          queues[qkey] = name("q-#{kind}-#{qkey}")
          declare_queue(ch, queues[qkey])
        end
        ch.queue_bind(queues[qkey], ex, routing_key: rk, arguments: args || {})
      end
      publishes.each do |rk, headers, body|
        ch.basic_publish(body, ex, rk, headers ? { headers: headers } : {})
      end
      expect.each do |qkey, bodies|
        got = consume(ch, queues[qkey], bodies.size).map { |_, _, b| b }
        check(got == bodies, "#{qkey}: sent #{bodies.inspect} got #{got.inspect}")
        assert_empty(ch, queues[qkey])
      end
    ensure
      queues.each_value { |q| ch.queue_delete(q) }
      ch.exchange_delete(ex)
    end
  end
end

def case_direct
  exchange_case("direct", [["a", "k1", nil]], [["k2", nil, "no"], ["k1", nil, "yes"]], { "a" => ["yes"] })
end

def case_fanout
  exchange_case("fanout", [["a", "", nil], ["b", "", nil]], [["whatever", nil, "m1"]],
                { "a" => ["m1"], "b" => ["m1"] })
end

def case_topic
  exchange_case("topic", [["a", "a.*.c", nil], ["a", "x.#", nil], ["b", "#", nil]],
                [["a.b.d", nil, "no"], ["a.b.c", nil, "abc"], ["x.y.z", nil, "xyz"]],
                { "a" => %w[abc xyz], "b" => %w[no abc xyz] })
end

def case_headers
  exchange_case("headers",
                [["all", "", { "x-match" => "all", "h1" => "v1", "h2" => "v2" }],
                 ["any", "", { "x-match" => "any", "h1" => "v1", "h3" => "v3" }]],
                [["", { "h1" => "v1" }, "one"], ["", { "h4" => "v4" }, "none"],
                 ["", { "h1" => "v1", "h2" => "v2" }, "both"]],
                { "all" => ["both"], "any" => %w[one both] })
end

HEADERS = {
  "str" => "hello w\u00f6rld",
  "empty" => "",
  "int" => 42,
  "neg" => -12_345,
  "long" => 1 << 40,
  "bool" => true,
  "false" => false,
  "float" => 2.5,
  # amq-protocol 2.3 mis-encodes fractional BigDecimals (0.12345e2 goes out as
  # 12, before any broker sees it), so only a whole-number decimal is sent.
  "decimal" => BigDecimal("12"),
  "time" => Time.at(1_700_000_000),
  "void" => nil,
  "nested" => { "inner" => "x", "n" => 7, "deeper" => { "flag" => false, "s" => "deep", "f" => -0.125 } },
  "array" => [1, "two", { "three" => 3 }, [4, "five"]],
}.freeze

# first_diff compares type and value; strings compare by bytes because the
# decoder hands back binary (ASCII-8BIT) strings.
def first_diff(sent, got, path)
  if sent.is_a?(Hash) && got.is_a?(Hash)
    return "#{path}: keys sent #{sent.keys.sort} got #{got.keys.sort}" if sent.keys.sort != got.keys.sort
    sent.each_key do |k|
      d = first_diff(sent[k], got[k], "#{path}.#{k}")
      return d if d
    end
    return nil
  end
  if sent.is_a?(Array) && got.is_a?(Array)
    return "#{path}: length sent #{sent.size} got #{got.size}" if sent.size != got.size
    sent.each_with_index do |v, i|
      d = first_diff(v, got[i], "#{path}[#{i}]")
      return d if d
    end
    return nil
  end
  if sent.is_a?(String) && got.is_a?(String)
    return sent.b == got.b ? nil : "#{path}: sent #{sent.inspect} got #{got.inspect}"
  end
  return nil if sent.class == got.class && sent == got
  "#{path}: sent #{sent.inspect} (#{sent.class}) got #{got.inspect} (#{got.class})"
end

def case_properties
  q = name("q-props")
  props = {
    content_type: "application/json", content_encoding: "utf-8", headers: HEADERS,
    delivery_mode: 2, priority: 5, correlation_id: "corr-1", reply_to: "reply.q",
    expiration: "600000", message_id: "msg-1", timestamp: 1_700_000_000, type: "t.type",
    user_id: USER, app_id: "interop-app", cluster_id: "cluster-x"
  }
  session do |_conn, ch|
    declare_queue(ch, q)
    begin
      ch.basic_publish('{"k":1}', "", q, props)
      _, got, body = consume(ch, q, 1).first
      check(body == '{"k":1}', "body #{body.inspect}")
      props.each do |k, v|
        # Bunny encodes the timestamp from an Integer and decodes it as a Time.
        v = Time.at(v) if k == :timestamp
        d = first_diff(v, got.send(k), k.to_s)
        check(d.nil?, d)
      end
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_large_body
  q = name("q-large")
  session do |_conn, ch|
    declare_queue(ch, q)
    begin
      ch.basic_publish(LARGE, "", q, {})
      _, _, body = consume(ch, q, 1).first
      check(body.b == LARGE, "1 MiB body differs (got #{body.bytesize} bytes)")
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_ack_nack
  q = name("q-acknack")
  session do |_conn, ch|
    declare_queue(ch, q)
    begin
      ch.basic_publish("redo", "", q, {})
      ch.prefetch(1)
      seen = Queue.new
      consumer = ch.queue(q, passive: true).subscribe(manual_ack: true) do |di, _props, body|
        seen << [di.redelivered?, body]
        if seen.size == 1
          ch.nack(di.delivery_tag, false, true)
        else
          ch.ack(di.delivery_tag)
        end
      end
      wait_for { seen.size >= 2 }
      consumer.cancel
      got = []
      got << seen.pop until seen.empty?
      check(got == [[false, "redo"], [true, "redo"]], "deliveries (redelivered, body): #{got.inspect}")
      assert_empty(ch, q)
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_confirms
  q = name("q-confirm")
  session do |_conn, ch|
    declare_queue(ch, q)
    begin
      ch.confirm_select
      10.times { |i| ch.basic_publish("c#{i}", "", q, {}) }
      ok = Timeout.timeout(WAIT) { ch.wait_for_confirms }
      check(ok, "nacked: #{ch.nacked_set.to_a.inspect}")
      n = ch.queue_declare(q, passive: true).message_count
      check(n == 10, "message_count #{n}, want 10")
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_tx_commit
  q = name("q-txc")
  session do |conn, ch|
    declare_queue(ch, q)
    begin
      tx = conn.create_channel
      tx.tx_select
      tx.basic_publish("committed", "", q, {})
      _, _, b = ch.basic_get(q, manual_ack: false)
      check(b.nil?, "message visible before commit")
      tx.tx_commit
      _, _, body = ch.basic_get(q, manual_ack: false)
      check(body == "committed", "committed message missing: #{body.inspect}")
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_tx_rollback
  q = name("q-txr")
  session do |conn, ch|
    declare_queue(ch, q)
    begin
      tx = conn.create_channel
      tx.tx_select
      tx.basic_publish("rolled-back", "", q, {})
      tx.tx_rollback
      tx.tx_commit
      assert_empty(ch, q)
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_basic_get
  q = name("q-get")
  session do |_conn, ch|
    declare_queue(ch, q)
    begin
      ch.basic_publish("g1", "", q, {})
      ch.basic_publish("g2", "", q, {})
      di, _, body = ch.basic_get(q, manual_ack: true)
      check(!body.nil?, "basic.get returned empty")
      check(body == "g1", "body #{body.inspect}")
      check(di.message_count == 1, "message_count #{di.message_count}, want 1")
      check(!di.redelivered, "redelivered set on first get")
      ch.ack(di.delivery_tag)
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_get_empty
  q = name("q-getempty")
  session do |_conn, ch|
    declare_queue(ch, q)
    begin
      _, _, body = ch.basic_get(q, manual_ack: true)
      check(body.nil?, "basic.get on an empty queue returned a message")
    ensure
      ch.queue_delete(q)
    end
  end
end

def case_mandatory_return
  ex = name("ex-mand")
  session do |_conn, ch|
    x = ch.direct(ex, durable: false, auto_delete: false)
    begin
      returned = Queue.new
      x.on_return { |ri, _props, body| returned << [ri, body] }
      x.publish("bounce", routing_key: "nowhere", mandatory: true)
      r = wait_for { returned.empty? ? nil : returned.pop }
      check(r, "no basic.return")
      ri, body = r
      check(ri.reply_code == 312 && ri.exchange == ex && ri.routing_key == "nowhere" && body == "bounce",
            "return #{ri.reply_code} #{ri.reply_text} #{ri.exchange} #{ri.routing_key} #{body.inspect}")
    ensure
      ch.exchange_delete(ex)
    end
  end
end

def case_consumer_cancel
  q = name("q-cancel")
  session do |conn, ch|
    declare_queue(ch, q)
    cancelled = Queue.new
    consumer = Bunny::Consumer.new(ch, q, "interop-cancel-#{SUFFIX}", true)
    consumer.on_delivery { |*| nil }
    consumer.on_cancellation { |basic_cancel| cancelled << basic_cancel.consumer_tag }
    ch.basic_consume_with(consumer)
    other = conn.create_channel
    other.queue_delete(q)
    tag = wait_for { cancelled.empty? ? nil : cancelled.pop }
    check(tag == consumer.consumer_tag, "cancel notification #{tag.inspect}, want #{consumer.consumer_tag.inspect}")
  end
end

CASES = [
  ["connect", :case_connect],
  ["auth-refused", :case_auth_refused],
  ["direct", :case_direct],
  ["fanout", :case_fanout],
  ["topic", :case_topic],
  ["headers", :case_headers],
  ["properties", :case_properties],
  ["large-body", :case_large_body],
  ["ack-nack-requeue", :case_ack_nack],
  ["confirms", :case_confirms],
  ["tx-commit", :case_tx_commit],
  ["tx-rollback", :case_tx_rollback],
  ["basic-get", :case_basic_get],
  ["get-empty", :case_get_empty],
  ["mandatory-return", :case_mandatory_return],
  ["consumer-cancel-notify", :case_consumer_cancel],
].freeze

$stdout.sync = true
failed = 0
connected = true
CASES.each do |c, fn|
  unless connected
    # Without a broker every case would wait its full timeout: fail fast.
    failed += 1
    puts "FAIL #{CLIENT} #{c}: not run, connect failed"
    next
  end
  begin
    Timeout.timeout(CASE_LIMIT) { send(fn) }
    puts "PASS #{CLIENT} #{c}"
  rescue Exception => e # rubocop:disable Lint/RescueException - any failure is a FAIL line
    failed += 1
    connected = c != "connect"
    reason = "#{e.class}: #{e.message}".gsub(/\s+/, " ")[0, 300]
    puts "FAIL #{CLIENT} #{c}: #{reason}"
    warn e.backtrace.first(8).join("\n") if ENV["INTEROP_DEBUG"]
  end
end
exit!(failed.zero? ? 0 : 1)
