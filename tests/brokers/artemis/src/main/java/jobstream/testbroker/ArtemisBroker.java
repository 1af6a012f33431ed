package jobstream.testbroker;

import org.apache.activemq.artemis.api.core.QueueConfiguration;
import org.apache.activemq.artemis.api.core.SimpleString;
import org.apache.activemq.artemis.core.config.Configuration;
import org.apache.activemq.artemis.core.config.impl.ConfigurationImpl;
import org.apache.activemq.artemis.core.config.impl.SecurityConfiguration;
import org.apache.activemq.artemis.core.server.ActiveMQServer;
import org.apache.activemq.artemis.core.server.JournalType;
import org.apache.activemq.artemis.core.server.Queue;
import org.apache.activemq.artemis.core.server.impl.ActiveMQServerImpl;
import org.apache.activemq.artemis.core.settings.impl.AddressFullMessagePolicy;
import org.apache.activemq.artemis.core.settings.impl.AddressSettings;
import org.apache.activemq.artemis.spi.core.security.ActiveMQJAASSecurityManager;
import org.apache.activemq.artemis.spi.core.security.jaas.InVMLoginModule;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;

/**
 * Apache ActiveMQ Artemis (embedded) as a stand-alone MQTT test broker, in the foreground, logging
 * to stdout:
 *
 * <pre>java -cp 'target/artemis-test-broker.jar:target/lib/*' jobstream.testbroker.ArtemisBroker PORT DATA_DIR [WS_PORT]</pre>
 *
 * One MQTT-only acceptor on 127.0.0.1:PORT (ARTEMIS_BIND overrides); Artemis also takes MQTT over
 * WebSocket on that same port. WS_PORT, if given, adds a second MQTT acceptor (which likewise speaks
 * both). Security off: every client is let in and may publish and subscribe anywhere, $-topics
 * included (Artemis has no rule against publishing to them; `#` and `+/...` subscriptions do not
 * match them, [MQTT-4.7.2-1]).
 *
 * Persistence on: sessions, subscriptions (shared ones too: one durable core queue per share name
 * and filter, its members are consumers of it) and queued messages live in a journal under
 * DATA_DIR (bindings/, journal/, paging/, large-messages/) and survive kill -9; ARTEMIS_PERSISTENCE=false
 * keeps nothing. A QoS 1/2 PUBLISH is acknowledged only after the journal has it on disk.
 *
 * Unacknowledged QoS 1/2 messages in flight to one client: the client's MQTT 5 Receive Maximum,
 * else ARTEMIS_INFLIGHT (Artemis's own default 65535, i.e. practically unlimited; HiveMQ's is 50).
 *
 * Two shared-subscription bugs of Artemis (2.40.0 to 2.55.0 at least): members subscribing at the
 * same moment knock each other off, worked around here (see below; off with
 * ARTEMIS_QUEUE_EXISTS_FIX=false); and a repeated SUBSCRIBE of a shared subscription on a live
 * session sends every unacknowledged message again (it looks the subscription up without its
 * `$share/<name>/` prefix, finds none, and replaces the consumer), which is not worked around:
 * those are redeliveries, which at-least-once MQTT allows and the bridge drops as duplicates.
 */
public final class ArtemisBroker {

    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: ArtemisBroker PORT DATA_DIR [WS_PORT]");
            System.exit(2);
        }
        // slf4j-simple: to stdout, with time stamps; must be set before the first logger is made.
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.out");
        System.setProperty("org.slf4j.simpleLogger.showDateTime", "true");
        System.setProperty("org.slf4j.simpleLogger.dateTimeFormat", "yyyy-MM-dd HH:mm:ss.SSS");
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", env("ARTEMIS_LOG_LEVEL", "info"));
        // Artemis audit loggers (one line per management call, even with security off): quiet.
        System.setProperty("org.slf4j.simpleLogger.log.org.apache.activemq.audit", "warn");

        int port = Integer.parseInt(args[0]);
        Path dir = Files.createDirectories(Path.of(args[1]).toAbsolutePath());
        Integer wsPort = args.length > 2 ? Integer.valueOf(args[2]) : null;
        String bind = env("ARTEMIS_BIND", "127.0.0.1");
        boolean persistent = Boolean.parseBoolean(env("ARTEMIS_PERSISTENCE", "true"));
        String inflight = env("ARTEMIS_INFLIGHT", "");

        // MQTT acceptor parameters (Artemis docs, "MQTT"): sessions of MQTT 3.1.1 clients and of
        // MQTT 5 clients that give no Session Expiry Interval never expire (-1); no MQTT 5
        // flow control towards publishers beyond the 65535 the protocol allows.
        String mqttParams = "protocols=MQTT"
                + ";defaultMqttSessionExpiryInterval=-1"
                + ";receiveMaximum=65535"
                + (inflight.isEmpty() ? "" : ";defaultMaximumInFlightPublishMessages=" + inflight);

        Configuration config = new ConfigurationImpl()
                .setName("jobstream-test")
                .setPersistenceEnabled(persistent)
                .setSecurityEnabled(false)
                .setJMXManagementEnabled(false)
                // NIO journal: no libaio, same files on every machine.
                .setJournalType(JournalType.NIO)
                .setBindingsDirectory(dir.resolve("bindings").toString())
                .setJournalDirectory(dir.resolve("journal").toString())
                .setPagingDirectory(dir.resolve("paging").toString())
                .setLargeMessagesDirectory(dir.resolve("large-messages").toString())
                .setNodeManagerLockDirectory(dir.toString())
                // A loaded test machine must not make Artemis halt or block producers:
                // the critical analyzer can stop the broker when a thread stalls, and a disk
                // fuller than 90 % (the default max-disk-usage) blocks all producers.
                .setCriticalAnalyzer(false)
                .setMaxDiskUsage(-1)
                // Expired MQTT sessions are looked for every so often (ms; Artemis's default 5000).
                .setMqttSessionScanInterval(5000)
                .addAcceptorConfiguration("mqtt", "tcp://" + bind + ":" + port + "?" + mqttParams);
        if (wsPort != null) {
            config.addAcceptorConfiguration("mqtt-ws", "tcp://" + bind + ":" + wsPort + "?" + mqttParams);
        }
        // All addresses: never drop a message for having been delivered too often (the default
        // max-delivery-attempts 10 would throw it away -- there is no dead-letter address --
        // after ten disconnects of members that held it unacknowledged); page to disk when memory
        // runs short rather than block or drop.
        config.addAddressSetting("#", new AddressSettings()
                .setMaxDeliveryAttempts(-1)
                // Never used (no expiry, no delivery limit); named only so that Artemis does not
                // warn "No Dead Letter Address configured" for every new queue.
                .setDeadLetterAddress(SimpleString.of("DLQ"))
                .setExpiryAddress(SimpleString.of("ExpiryQueue"))
                .setRedeliveryDelay(0)
                .setAddressFullMessagePolicy(AddressFullMessagePolicy.PAGE)
                .setAutoCreateAddresses(true)
                .setAutoCreateQueues(true));

        long t0 = System.nanoTime();
        // What ActiveMQServers.newActiveMQServer(config) builds, except for queue creation: the
        // MQTT protocol creates a shared subscription's queue ("<share name>.<filter>") on the
        // first SUBSCRIBE with a look-up followed by a create, unsynchronised; members that
        // subscribe at the same moment (each right after its CONNACK) race, and the loser's
        // create fails with AMQ229019 "queue already exists" -- Artemis then drops that client's
        // connection (MQTT 5: DISCONNECT 0x83), and it has to reconnect and subscribe again.
        // Here an existing queue of that name is simply used. ARTEMIS_QUEUE_EXISTS_FIX=false
        // turns this off (Artemis as shipped).
        boolean fix = Boolean.parseBoolean(env("ARTEMIS_QUEUE_EXISTS_FIX", "true"));
        ActiveMQServer server = new ActiveMQServerImpl(config, null,
                new ActiveMQJAASSecurityManager(InVMLoginModule.class.getName(), new SecurityConfiguration())) {
            @Override
            public Queue createQueue(QueueConfiguration queueConfiguration) throws Exception {
                return createQueue(queueConfiguration, fix);
            }
        };
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                server.stop();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }));
        server.start();
        if (!server.waitForActivation(60, TimeUnit.SECONDS)) {
            System.err.println("artemis: not active after 60 s");
            System.exit(1);
        }
        System.out.printf("artemis: Apache Artemis %s embedded, MQTT on %s:%d%s, data in %s (%s), started in %.1fs%n",
                server.getVersion().getFullVersion(), bind, port,
                wsPort == null ? "" : " and " + bind + ":" + wsPort, dir,
                persistent ? "persistent" : "in memory", (System.nanoTime() - t0) / 1e9);
        System.out.flush();
        stopped.await();
    }

    private static String env(String name, String fallback) {
        String v = System.getenv(name);
        return v == null || v.isEmpty() ? fallback : v;
    }
}
