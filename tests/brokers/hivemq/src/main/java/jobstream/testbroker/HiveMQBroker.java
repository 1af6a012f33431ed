package jobstream.testbroker;

import com.hivemq.embedded.EmbeddedExtension;
import com.hivemq.embedded.EmbeddedHiveMQ;
import com.hivemq.extension.sdk.api.ExtensionMain;
import com.hivemq.extension.sdk.api.auth.SimpleAuthenticator;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStartOutput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopInput;
import com.hivemq.extension.sdk.api.parameter.ExtensionStopOutput;
import com.hivemq.extension.sdk.api.services.Services;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;

/**
 * HiveMQ CE (embedded) as a stand-alone test broker, in the foreground, logging to stdout:
 *
 * <pre>java -cp 'target/hivemq-test-broker.jar:target/lib/*' jobstream.testbroker.HiveMQBroker PORT DATA_DIR [WS_PORT]</pre>
 *
 * Listens on 127.0.0.1 (HIVEMQ_BIND overrides). Writes DATA_DIR/conf/config.xml and
 * logback.xml, keeps sessions, subscriptions and queued messages in DATA_DIR/data
 * (file persistence: they survive a restart; HIVEMQ_PERSISTENCE=in-memory keeps nothing) and
 * lets every client in (an embedded allow-all authenticator: HiveMQ CE refuses all clients when
 * no security extension is present), and lets clients publish to $-topics (off in HiveMQ by
 * default, see below). Queue per client: HIVEMQ_MAX_QUEUE (default 100000000,
 * HiveMQ's own default is 1000, beyond which it discards new messages); unacknowledged messages
 * in flight to one client: HIVEMQ_INFLIGHT (unset: HiveMQ's own, 50). TLS listener:
 * HIVEMQ_TLS_PORT, HIVEMQ_TLS_KEYSTORE (PKCS12/JKS), HIVEMQ_TLS_PASSWORD (default changeit),
 * HIVEMQ_TLS_TRUSTSTORE (optional: then client certificates are required).
 */
public final class HiveMQBroker {

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: HiveMQBroker PORT DATA_DIR [WS_PORT]");
            System.exit(2);
        }
        int port = Integer.parseInt(args[0]);
        Path dir = Path.of(args[1]).toAbsolutePath();
        Integer wsPort = args.length > 2 ? Integer.valueOf(args[2]) : null;
        String bind = env("HIVEMQ_BIND", "127.0.0.1");
        String persistence = env("HIVEMQ_PERSISTENCE", "file");
        String maxQueue = env("HIVEMQ_MAX_QUEUE", "100000000");
        String inflight = env("HIVEMQ_INFLIGHT", "");

        Path conf = Files.createDirectories(dir.resolve("conf"));
        Path data = Files.createDirectories(dir.resolve("data"));
        Path extensions = Files.createDirectories(dir.resolve("extensions"));
        StringBuilder listeners = new StringBuilder();
        listeners.append("    <tcp-listener><port>").append(port).append("</port><bind-address>")
                .append(bind).append("</bind-address></tcp-listener>\n");
        if (wsPort != null) {
            listeners.append("    <websocket-listener><port>").append(wsPort).append("</port><bind-address>")
                    .append(bind).append("</bind-address><path>/mqtt</path>")
                    .append("<subprotocols><subprotocol>mqttv3.1</subprotocol><subprotocol>mqtt</subprotocol></subprotocols>")
                    .append("<allow-extensions>true</allow-extensions></websocket-listener>\n");
        }
        String tlsPort = env("HIVEMQ_TLS_PORT", "");
        if (!tlsPort.isEmpty()) {
            // PKCS12 or JKS key store with the server's key and certificate chain (make one from
            // PEM files: openssl pkcs12 -export -in cert.pem -inkey key.pem -out server.p12).
            String password = env("HIVEMQ_TLS_PASSWORD", "changeit");
            String trust = env("HIVEMQ_TLS_TRUSTSTORE", "");
            listeners.append("    <tls-tcp-listener><port>").append(tlsPort).append("</port><bind-address>")
                    .append(bind).append("</bind-address><tls>")
                    .append("<keystore><path>").append(env("HIVEMQ_TLS_KEYSTORE", "")).append("</path><password>")
                    .append(password).append("</password><private-key-password>").append(password)
                    .append("</private-key-password></keystore>");
            if (!trust.isEmpty()) {  // mutual TLS: clients must present a certificate this store trusts
                listeners.append("<truststore><path>").append(trust).append("</path><password>").append(password)
                        .append("</password></truststore><client-authentication-mode>REQUIRED</client-authentication-mode>");
            }
            listeners.append("</tls></tls-tcp-listener>\n");
        }
        Files.writeString(conf.resolve("config.xml"), String.join("\n",
                "<?xml version=\"1.0\"?>",
                "<hivemq>",
                "  <listeners>",
                listeners.toString(),
                "  </listeners>",
                "  <mqtt>",
                "    <queued-messages><max-queue-size>" + maxQueue + "</max-queue-size><strategy>discard</strategy></queued-messages>",
                "    <session-expiry><max-interval>4294967295</max-interval></session-expiry>",
                // Receive Maximum the broker announces to MQTT 5 publishers (HiveMQ's default 10;
                // a client that has more QoS 1 PUBLISHes unacknowledged is disconnected).
                "    <receive-maximum><server-receive-maximum>65535</server-receive-maximum></receive-maximum>",
                "  </mqtt>",
                "  <persistence><mode>" + persistence + "</mode></persistence>",
                "  <anonymous-usage-statistics><enabled>false</enabled></anonymous-usage-statistics>",
                "</hivemq>", ""));
        Files.writeString(conf.resolve("logback.xml"), String.join("\n",
                "<configuration scan=\"false\">",
                "  <appender name=\"CONSOLE\" class=\"ch.qos.logback.core.ConsoleAppender\">",
                "    <encoder><pattern>%d %-5level %logger{20} - %msg%n%ex</pattern></encoder>",
                "  </appender>",
                "  <root level=\"" + env("HIVEMQ_LOG_LEVEL", "INFO") + "\"><appender-ref ref=\"CONSOLE\"/></root>",
                "  <logger name=\"jetbrains.exodus\" level=\"WARN\"/>",
                "  <logger name=\"oshi\" level=\"ERROR\"/>",
                "  <logger name=\"com.google.common.util.concurrent.Futures.CombinedFuture\" level=\"OFF\"/>",
                "</configuration>", ""));

        EmbeddedExtension allowAll = EmbeddedExtension.builder()
                .withId("jobstream-allow-all")
                .withName("allow all clients")
                .withVersion("1")
                .withAuthor("jobstream")
                .withPriority(0)
                .withStartPriority(1000)
                .withExtensionMain(new ExtensionMain() {
                    @Override
                    public void extensionStart(ExtensionStartInput in, ExtensionStartOutput out) {
                        Services.securityRegistry().setAuthenticatorProvider(
                                input -> (SimpleAuthenticator) (connect, auth) -> auth.authenticateSuccessfully());
                    }

                    @Override
                    public void extensionStop(ExtensionStopInput in, ExtensionStopOutput out) {
                    }
                })
                .build();

        // HiveMQ CE disconnects a client that PUBLISHes to a topic starting with '$' ("Protocol
        // error: Sent PUBLISH for a topic that starts with '$'") unless this internal switch (no
        // config.xml key; read when the broker is built) is on. The tests publish $aws/events/...
        com.hivemq.configuration.service.InternalConfigurations.MQTT_ALLOW_DOLLAR_TOPICS.set(true);
        // Unacknowledged QoS 1 messages HiveMQ sends one client (capped by the client's Receive
        // Maximum) and how many queued messages it reads per poll: both 50 in HiveMQ, internal.
        // Left at HiveMQ's own unless asked: at 1,000, a shared subscription's members stalled
        // after a few dozen messages (seen with jobstream's bridge, 3 connections, 6,000 events).
        if (!inflight.isEmpty()) {
            com.hivemq.configuration.service.InternalConfigurations.MAX_INFLIGHT_WINDOW_SIZE_MESSAGES = Integer.parseInt(inflight);
            com.hivemq.configuration.service.InternalConfigurations.PUBLISH_POLL_BATCH_SIZE = Integer.parseInt(inflight);
        }
        long t0 = System.nanoTime();
        EmbeddedHiveMQ hivemq = EmbeddedHiveMQ.builder()
                .withConfigurationFolder(conf)
                .withDataFolder(data)
                .withExtensionsFolder(extensions)
                .withEmbeddedExtension(allowAll)
                .build();
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                hivemq.stop().join();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }));
        hivemq.start().join();
        System.out.printf("hivemq: HiveMQ CE embedded listening on %s:%d%s, data in %s, started in %.1fs%n",
                bind, port, wsPort == null ? "" : " (WebSocket " + wsPort + " /mqtt)", data,
                (System.nanoTime() - t0) / 1e9);
        System.out.flush();
        stopped.await();
    }

    private static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }
}
