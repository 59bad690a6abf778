// Interop cases with the RabbitMQ Java client (Debian librabbitmq-client-java, com.rabbitmq.client).
// Prints one "PASS java <case>" / "FAIL java <case>: <reason>" line per case.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.AuthenticationFailureException;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.LongString;
import com.rabbitmq.client.PossibleAuthenticationFailureException;

import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Random;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

public class Interop {
    static final String CLIENT = "java";
    static final String HOST = env("AMQP_HOST", "127.0.0.1");
    static final int PORT = Integer.parseInt(env("AMQP_PORT", "5672"));
    static final String USER = env("AMQP_USER", "guest");
    static final String PASS = env("AMQP_PASS", "guest");
    static final String VHOST = env("AMQP_VHOST", "/");
    static final long WAIT_MS = (long) (Double.parseDouble(env("INTEROP_WAIT", "5")) * 1000);
    static final long CASE_LIMIT_MS = Long.parseLong(env("INTEROP_CASE_LIMIT", "12")) * 1000;
    static final String SUFFIX = Long.toString(Math.abs(new Random().nextLong()), 36);
    static final byte[] LARGE = new byte[1 << 20];

    static {
        for (int i = 0; i < LARGE.length; i++) {
            LARGE[i] = (byte) ((i * 7 + (i >> 10)) & 0xff);
        }
    }

    static String env(String k, String d) {
        String v = System.getenv(k);
        return v == null || v.isEmpty() ? d : v;
    }

    static String name(String kind) {
        return "interop." + kind + "." + SUFFIX;
    }

    static void check(boolean cond, String msg) {
        if (!cond) {
            throw new AssertionError(msg);
        }
    }

    static ConnectionFactory factory(String password) {
        ConnectionFactory f = new ConnectionFactory();
        f.setHost(HOST);
        f.setPort(PORT);
        f.setUsername(USER);
        f.setPassword(password);
        f.setVirtualHost(VHOST);
        f.setConnectionTimeout((int) WAIT_MS);
        f.setHandshakeTimeout((int) WAIT_MS);
        f.setShutdownTimeout((int) WAIT_MS);
        f.setChannelRpcTimeout((int) WAIT_MS);
        f.setRequestedHeartbeat(30);
        f.setAutomaticRecoveryEnabled(false);
        return f;
    }

    static Connection connect() throws Exception {
        return factory(PASS).newConnection();
    }

    interface Body {
        void run(Connection conn, Channel ch) throws Exception;
    }

    static void session(Body body) throws Exception {
        Connection conn = connect();
        try {
            body.run(conn, conn.createChannel());
        } finally {
            conn.abort((int) WAIT_MS);
        }
    }

    static class Delivery {
        final Envelope env;
        final AMQP.BasicProperties props;
        final byte[] body;

        Delivery(Envelope env, AMQP.BasicProperties props, byte[] body) {
            this.env = env;
            this.props = props;
            this.body = body;
        }
    }

    static class Collector extends DefaultConsumer {
        final LinkedBlockingQueue<Delivery> q = new LinkedBlockingQueue<>();
        final LinkedBlockingQueue<String> cancels = new LinkedBlockingQueue<>();

        Collector(Channel ch) {
            super(ch);
        }

        @Override
        public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) {
            q.add(new Delivery(env, p, body));
        }

        @Override
        public void handleCancel(String tag) {
            cancels.add(tag);
        }
    }

    static List<Delivery> consume(Channel ch, String queue, int n) throws Exception {
        Collector c = new Collector(ch);
        String tag = ch.basicConsume(queue, true, c);
        List<Delivery> got = new ArrayList<>();
        long deadline = System.currentTimeMillis() + WAIT_MS;
        while (got.size() < n) {
            Delivery d = c.q.poll(Math.max(1, deadline - System.currentTimeMillis()), TimeUnit.MILLISECONDS);
            if (d == null) {
                break;
            }
            got.add(d);
        }
        ch.basicCancel(tag);
        check(got.size() >= n, "expected " + n + " deliveries from " + queue + ", got " + got.size());
        return got;
    }

    static void assertEmpty(Channel ch, String q) throws Exception {
        check(ch.basicGet(q, true) == null, "queue " + q + " should be empty");
    }

    static void declareQueue(Channel ch, String q) throws Exception {
        ch.queueDeclare(q, false, false, false, null);
    }

    static String str(byte[] b) {
        return new String(b, StandardCharsets.UTF_8);
    }

    static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    // --- cases ---------------------------------------------------------------

    static void caseConnect() throws Exception {
        Connection c = connect();
        Channel ch = c.createChannel();
        check(ch.isOpen(), "channel not open");
        c.close();
    }

    static void caseAuthRefused() throws Exception {
        Connection c;
        try {
            c = factory(PASS + "-wrong").newConnection();
        } catch (AuthenticationFailureException e) {
            return;
        } catch (PossibleAuthenticationFailureException e) {
            throw new AssertionError("refused only as a possible authentication failure: " + e);
        }
        c.close();
        throw new AssertionError("connection with a wrong password succeeded");
    }

    static void exchangeCase(String kind, Object[][] bindings, Object[][] publishes, Map<String, List<String>> expect)
            throws Exception {
        String ex = name("ex-" + kind);
        session((conn, ch) -> {
            ch.exchangeDeclare(ex, kind, false, false, null);
            Map<String, String> queues = new LinkedHashMap<>();
            try {
                for (Object[] b : bindings) {
                    String qkey = (String) b[0];
                    if (!queues.containsKey(qkey)) {
                        queues.put(qkey, name("q-" + kind + "-" + qkey));
                        declareQueue(ch, queues.get(qkey));
                    }
                    @SuppressWarnings("unchecked")
                    Map<String, Object> args = (Map<String, Object>) b[2];
                    ch.queueBind(queues.get(qkey), ex, (String) b[1], args);
                }
                for (Object[] p : publishes) {
                    @SuppressWarnings("unchecked")
                    Map<String, Object> h = (Map<String, Object>) p[1];
                    ch.basicPublish(ex, (String) p[0], new AMQP.BasicProperties.Builder().headers(h).build(),
                            bytes((String) p[2]));
                }
                for (Map.Entry<String, List<String>> e : expect.entrySet()) {
                    List<String> got = new ArrayList<>();
                    for (Delivery d : consume(ch, queues.get(e.getKey()), e.getValue().size())) {
                        got.add(str(d.body));
                    }
                    check(got.equals(e.getValue()), e.getKey() + ": sent " + e.getValue() + " got " + got);
                    assertEmpty(ch, queues.get(e.getKey()));
                }
            } finally {
                for (String q : queues.values()) {
                    ch.queueDelete(q);
                }
                ch.exchangeDelete(ex);
            }
        });
    }

    static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], kv[i + 1]);
        }
        return m;
    }

    static Map<String, List<String>> expect(Object... kv) {
        Map<String, List<String>> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) {
            m.put((String) kv[i], Arrays.asList((String[]) kv[i + 1]));
        }
        return m;
    }

    static void caseDirect() throws Exception {
        exchangeCase("direct", new Object[][] {{"a", "k1", null}},
                new Object[][] {{"k2", null, "no"}, {"k1", null, "yes"}},
                expect("a", new String[] {"yes"}));
    }

    static void caseFanout() throws Exception {
        exchangeCase("fanout", new Object[][] {{"a", "", null}, {"b", "", null}},
                new Object[][] {{"whatever", null, "m1"}},
                expect("a", new String[] {"m1"}, "b", new String[] {"m1"}));
    }

    static void caseTopic() throws Exception {
        exchangeCase("topic", new Object[][] {{"a", "a.*.c", null}, {"a", "x.#", null}, {"b", "#", null}},
                new Object[][] {{"a.b.d", null, "no"}, {"a.b.c", null, "abc"}, {"x.y.z", null, "xyz"}},
                expect("a", new String[] {"abc", "xyz"}, "b", new String[] {"no", "abc", "xyz"}));
    }

    static void caseHeaders() throws Exception {
        exchangeCase("headers",
                new Object[][] {{"all", "", map("x-match", "all", "h1", "v1", "h2", "v2")},
                    {"any", "", map("x-match", "any", "h1", "v1", "h3", "v3")}},
                new Object[][] {{"", map("h1", "v1"), "one"}, {"", map("h4", "v4"), "none"},
                    {"", map("h1", "v1", "h2", "v2"), "both"}},
                expect("all", new String[] {"both"}, "any", new String[] {"one", "both"}));
    }

    /** Sent headers: every field-table type the Java client can encode. */
    static Map<String, Object> sentHeaders() {
        return map(
                "str", "hello w\u00f6rld",
                "empty", "",
                "byte", (byte) -7,
                "short", (short) 1000,
                "int", 42,
                "neg", -12345,
                "long", 1L << 40,
                "bool", true,
                "false", false,
                "float", 1.5f,
                "double", 2.5d,
                "decimal", new BigDecimal("12.345"),
                "time", new Date(1700000000000L),
                "bytes", new byte[] {0, (byte) 0xff, 'r', 'a', 'w'},
                "void", null,
                "nested", map("inner", "x", "n", 7, "deeper", map("flag", false, "s", "deep", "f", -0.125d)),
                "array", Arrays.asList(1, "two", map("three", 3), Arrays.asList(4, "five")));
    }

    /** The Java client decodes every 'S' value as LongString: that is its String. */
    static Object norm(Object v) {
        if (v instanceof LongString) {
            return v.toString();
        }
        if (v instanceof Map) {
            Map<String, Object> m = new LinkedHashMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                m.put(e.getKey().toString(), norm(e.getValue()));
            }
            return m;
        }
        if (v instanceof List) {
            List<Object> l = new ArrayList<>();
            for (Object o : (List<?>) v) {
                l.add(norm(o));
            }
            return l;
        }
        return v;
    }

    /** Exact comparison: same Java types and values; null when equal. */
    static String firstDiff(Object sent, Object got, String path) {
        if (sent == null || got == null) {
            return sent == got ? null : path + ": sent " + sent + " got " + got;
        }
        if (sent.getClass() != got.getClass()
                && !(sent instanceof Map && got instanceof Map)
                && !(sent instanceof List && got instanceof List)) {
            return path + ": sent " + sent + " (" + sent.getClass().getSimpleName() + ") got " + got + " ("
                    + got.getClass().getSimpleName() + ")";
        }
        if (sent instanceof Map) {
            Map<?, ?> a = (Map<?, ?>) sent;
            Map<?, ?> b = (Map<?, ?>) got;
            if (!a.keySet().equals(b.keySet())) {
                return path + ": keys sent " + a.keySet() + " got " + b.keySet();
            }
            for (Object k : a.keySet()) {
                String d = firstDiff(a.get(k), b.get(k), path + "." + k);
                if (d != null) {
                    return d;
                }
            }
            return null;
        }
        if (sent instanceof List) {
            List<?> a = (List<?>) sent;
            List<?> b = (List<?>) got;
            if (a.size() != b.size()) {
                return path + ": length sent " + a.size() + " got " + b.size();
            }
            for (int i = 0; i < a.size(); i++) {
                String d = firstDiff(a.get(i), b.get(i), path + "[" + i + "]");
                if (d != null) {
                    return d;
                }
            }
            return null;
        }
        if (sent instanceof byte[]) {
            return Arrays.equals((byte[]) sent, (byte[]) got) ? null
                    : path + ": sent " + Arrays.toString((byte[]) sent) + " got " + Arrays.toString((byte[]) got);
        }
        return sent.equals(got) ? null : path + ": sent " + sent + " got " + got;
    }

    static void caseProperties() throws Exception {
        String q = name("q-props");
        Map<String, Object> headers = sentHeaders();
        AMQP.BasicProperties props = new AMQP.BasicProperties.Builder()
                .contentType("application/json").contentEncoding("utf-8").headers(headers)
                .deliveryMode(2).priority(5).correlationId("corr-1").replyTo("reply.q")
                .expiration("600000").messageId("msg-1").timestamp(new Date(1700000000000L))
                .type("t.type").userId(USER).appId("interop-app").clusterId("cluster-x").build();
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                ch.basicPublish("", q, props, bytes("{\"k\":1}"));
                Delivery d = consume(ch, q, 1).get(0);
                check(str(d.body).equals("{\"k\":1}"), "body " + str(d.body));
                AMQP.BasicProperties g = d.props;
                Object[][] fields = {
                    {"contentType", props.getContentType(), g.getContentType()},
                    {"contentEncoding", props.getContentEncoding(), g.getContentEncoding()},
                    {"deliveryMode", props.getDeliveryMode(), g.getDeliveryMode()},
                    {"priority", props.getPriority(), g.getPriority()},
                    {"correlationId", props.getCorrelationId(), g.getCorrelationId()},
                    {"replyTo", props.getReplyTo(), g.getReplyTo()},
                    {"expiration", props.getExpiration(), g.getExpiration()},
                    {"messageId", props.getMessageId(), g.getMessageId()},
                    {"timestamp", props.getTimestamp(), g.getTimestamp()},
                    {"type", props.getType(), g.getType()},
                    {"userId", props.getUserId(), g.getUserId()},
                    {"appId", props.getAppId(), g.getAppId()},
                    {"clusterId", props.getClusterId(), g.getClusterId()},
                    {"headers", headers, norm(g.getHeaders())},
                };
                for (Object[] f : fields) {
                    String diff = firstDiff(f[1], f[2], (String) f[0]);
                    check(diff == null, diff);
                }
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseLargeBody() throws Exception {
        String q = name("q-large");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                ch.basicPublish("", q, null, LARGE);
                Delivery d = consume(ch, q, 1).get(0);
                check(Arrays.equals(d.body, LARGE), "1 MiB body differs (got " + d.body.length + " bytes)");
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseAckNack() throws Exception {
        String q = name("q-acknack");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                ch.basicPublish("", q, null, bytes("redo"));
                ch.basicQos(1);
                Collector c = new Collector(ch);
                String tag = ch.basicConsume(q, false, c);
                Delivery first = c.q.poll(WAIT_MS, TimeUnit.MILLISECONDS);
                check(first != null, "no first delivery");
                check(!first.env.isRedeliver() && str(first.body).equals("redo"), "first delivery redelivered="
                        + first.env.isRedeliver());
                ch.basicNack(first.env.getDeliveryTag(), false, true);
                Delivery second = c.q.poll(WAIT_MS, TimeUnit.MILLISECONDS);
                check(second != null, "no redelivery after nack(requeue=true)");
                check(second.env.isRedeliver() && str(second.body).equals("redo"), "redelivery redelivered="
                        + second.env.isRedeliver());
                ch.basicAck(second.env.getDeliveryTag(), false);
                ch.basicCancel(tag);
                assertEmpty(ch, q);
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseConfirms() throws Exception {
        String q = name("q-confirm");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                ch.confirmSelect();
                for (int i = 0; i < 10; i++) {
                    ch.basicPublish("", q, null, bytes("c" + i));
                }
                ch.waitForConfirmsOrDie(WAIT_MS);
                int n = ch.queueDeclarePassive(q).getMessageCount();
                check(n == 10, "message_count " + n + ", want 10");
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseTxCommit() throws Exception {
        String q = name("q-txc");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                Channel tx = conn.createChannel();
                tx.txSelect();
                tx.basicPublish("", q, null, bytes("committed"));
                check(ch.basicGet(q, true) == null, "message visible before commit");
                tx.txCommit();
                GetResponse r = ch.basicGet(q, true);
                check(r != null && str(r.getBody()).equals("committed"), "committed message missing");
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseTxRollback() throws Exception {
        String q = name("q-txr");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                Channel tx = conn.createChannel();
                tx.txSelect();
                tx.basicPublish("", q, null, bytes("rolled-back"));
                tx.txRollback();
                tx.txCommit();
                assertEmpty(ch, q);
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseBasicGet() throws Exception {
        String q = name("q-get");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                ch.basicPublish("", q, null, bytes("g1"));
                ch.basicPublish("", q, null, bytes("g2"));
                GetResponse r = ch.basicGet(q, false);
                check(r != null, "basic.get returned empty");
                check(str(r.getBody()).equals("g1"), "body " + str(r.getBody()));
                check(r.getMessageCount() == 1, "message_count " + r.getMessageCount() + ", want 1");
                check(!r.getEnvelope().isRedeliver(), "redelivered set on first get");
                ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseGetEmpty() throws Exception {
        String q = name("q-getempty");
        session((conn, ch) -> {
            declareQueue(ch, q);
            try {
                check(ch.basicGet(q, false) == null, "basic.get on an empty queue returned a message");
            } finally {
                ch.queueDelete(q);
            }
        });
    }

    static void caseMandatoryReturn() throws Exception {
        String ex = name("ex-mand");
        session((conn, ch) -> {
            ch.exchangeDeclare(ex, "direct", false, false, null);
            try {
                LinkedBlockingQueue<Object[]> returns = new LinkedBlockingQueue<>();
                ch.addReturnListener((code, text, exchange, rk, p, body) ->
                        returns.add(new Object[] {code, text, exchange, rk, body}));
                ch.basicPublish(ex, "nowhere", true, null, bytes("bounce"));
                Object[] r = returns.poll(WAIT_MS, TimeUnit.MILLISECONDS);
                check(r != null, "no basic.return");
                check((int) r[0] == 312 && ex.equals(r[2]) && "nowhere".equals(r[3])
                        && str((byte[]) r[4]).equals("bounce"), "return " + r[0] + " " + r[1] + " " + r[2] + " " + r[3]);
            } finally {
                ch.exchangeDelete(ex);
            }
        });
    }

    static void caseConsumerCancel() throws Exception {
        String q = name("q-cancel");
        session((conn, ch) -> {
            declareQueue(ch, q);
            Collector c = new Collector(ch);
            String tag = ch.basicConsume(q, true, c);
            Channel other = conn.createChannel();
            other.queueDelete(q);
            String got = c.cancels.poll(WAIT_MS, TimeUnit.MILLISECONDS);
            check(tag.equals(got), "cancel notification " + got + ", want " + tag);
        });
    }

    interface Case {
        void run() throws Exception;
    }

    public static void main(String[] args) throws Exception {
        Object[][] cases = {
            {"connect", (Case) Interop::caseConnect},
            {"auth-refused", (Case) Interop::caseAuthRefused},
            {"direct", (Case) Interop::caseDirect},
            {"fanout", (Case) Interop::caseFanout},
            {"topic", (Case) Interop::caseTopic},
            {"headers", (Case) Interop::caseHeaders},
            {"properties", (Case) Interop::caseProperties},
            {"large-body", (Case) Interop::caseLargeBody},
            {"ack-nack-requeue", (Case) Interop::caseAckNack},
            {"confirms", (Case) Interop::caseConfirms},
            {"tx-commit", (Case) Interop::caseTxCommit},
            {"tx-rollback", (Case) Interop::caseTxRollback},
            {"basic-get", (Case) Interop::caseBasicGet},
            {"get-empty", (Case) Interop::caseGetEmpty},
            {"mandatory-return", (Case) Interop::caseMandatoryReturn},
            {"consumer-cancel-notify", (Case) Interop::caseConsumerCancel},
        };
        ExecutorService pool = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        int failed = 0;
        boolean connected = true;
        for (Object[] c : cases) {
            if (!connected) {
                // Without a broker every case would wait its full timeout: fail fast.
                failed++;
                System.out.println("FAIL " + CLIENT + " " + c[0] + ": not run, connect failed");
                continue;
            }
            Case fn = (Case) c[1];
            Future<?> f = pool.submit(() -> {
                fn.run();
                return null;
            });
            try {
                f.get(CASE_LIMIT_MS, TimeUnit.MILLISECONDS);
                System.out.println("PASS " + CLIENT + " " + c[0]);
            } catch (TimeoutException e) {
                f.cancel(true);
                failed++;
                connected = !"connect".equals(c[0]);
                System.out.println("FAIL " + CLIENT + " " + c[0] + ": case exceeded " + CASE_LIMIT_MS + " ms");
            } catch (java.util.concurrent.ExecutionException e) {
                failed++;
                connected = !"connect".equals(c[0]);
                Throwable t = e.getCause();
                String reason = (t.getClass().getSimpleName() + ": " + t.getMessage()).replaceAll("\\s+", " ");
                if (reason.length() > 300) {
                    reason = reason.substring(0, 300);
                }
                System.out.println("FAIL " + CLIENT + " " + c[0] + ": " + reason);
                if (System.getenv("INTEROP_DEBUG") != null) {
                    t.printStackTrace();
                }
            }
            System.out.flush();
        }
        System.exit(failed == 0 ? 0 : 1);
    }
}
