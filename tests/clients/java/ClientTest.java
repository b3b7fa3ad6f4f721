// pgJDBC: plain statements, PreparedStatement past prepareThreshold (server-side prepares),
// batches, setAutoCommit(false) transactions, setReadOnly(true).
import java.sql.*;
import java.util.*;

public class ClientTest {
    static int primary = Integer.parseInt(System.getenv("PGSPLIT_PRIMARY_PORT"));
    static Set<Integer> replicas = new TreeSet<>();

    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    static int port(Statement s) throws SQLException {
        try (ResultSet rs = s.executeQuery("SELECT inet_server_port()")) {
            rs.next();
            return rs.getInt(1);
        }
    }

    public static void main(String[] args) throws Exception {
        for (String p : System.getenv("PGSPLIT_REPLICA_PORTS").split(",")) replicas.add(Integer.parseInt(p));
        String url = "jdbc:postgresql://127.0.0.1:" + System.getenv("PGSPLIT_PORT") + "/postgres?user=postgres&prepareThreshold=2";
        try (Connection c = DriverManager.getConnection(url)) {
            Statement s = c.createStatement();
            s.execute("DROP TABLE IF EXISTS jdbc_items");
            s.execute("CREATE TABLE jdbc_items (id serial PRIMARY KEY, v int)");
            Set<Integer> seen = new TreeSet<>();
            for (int i = 0; i < 30; i++) seen.add(port(s));
            check(seen.equals(replicas), "plain reads ran on " + seen);

            // Past prepareThreshold the driver switches to named server-side statements.
            PreparedStatement read = c.prepareStatement("SELECT ?::int + 1, inet_server_port()");
            seen.clear();
            for (int i = 0; i < 30; i++) {
                read.setInt(1, i);
                try (ResultSet rs = read.executeQuery()) {
                    rs.next();
                    check(rs.getInt(1) == i + 1, "wrong result");
                    seen.add(rs.getInt(2));
                }
            }
            check(seen.equals(replicas), "prepared reads ran on " + seen);

            PreparedStatement ins = c.prepareStatement("INSERT INTO jdbc_items (v) VALUES (?)");
            for (int i = 0; i < 100; i++) {
                ins.setInt(1, i);
                ins.addBatch();
            }
            int[] counts = ins.executeBatch();
            check(counts.length == 100, "batch");

            c.setAutoCommit(false);
            check(port(s) == primary, "read in setAutoCommit(false) ran off the primary");
            try (ResultSet rs = s.executeQuery("SELECT v FROM jdbc_items WHERE id = 1 FOR UPDATE")) {
                check(rs.next(), "row");
            }
            s.executeUpdate("UPDATE jdbc_items SET v = v + 1 WHERE id = 1");
            c.commit();
            c.setAutoCommit(true);

            c.setReadOnly(true);
            c.setAutoCommit(false);
            int first = port(s);
            check(replicas.contains(first), "read-only transaction ran on " + first);
            check(port(s) == first, "read-only transaction moved");
            c.commit();
            c.setAutoCommit(true);
            c.setReadOnly(false);

            // Serializable read-only transactions: the driver sets the session's isolation
            // (SET SESSION CHARACTERISTICS) and sends BEGIN READ ONLY; a standby would refuse.
            c.setTransactionIsolation(Connection.TRANSACTION_SERIALIZABLE);
            c.setReadOnly(true);
            c.setAutoCommit(false);
            check(port(s) == primary, "serializable read-only transaction ran off the primary");
            c.commit();
            c.setAutoCommit(true);
            c.setReadOnly(false);
            check(port(s) == primary, "serializable session read ran off the primary");
            c.setTransactionIsolation(Connection.TRANSACTION_READ_COMMITTED);
            check(replicas.contains(port(s)), "read committed again: reads off the replicas");

            // set_config with bound parameters: replayed, not pinned.
            PreparedStatement set = c.prepareStatement("SELECT set_config(?, ?, false)");
            set.setString(1, "TimeZone");
            set.setString(2, "Asia/Tokyo");
            for (int i = 0; i < 3; i++) set.executeQuery().close();
            seen.clear();
            for (int i = 0; i < 30; i++) {
                try (ResultSet rs = s.executeQuery("SELECT inet_server_port(), current_setting('TimeZone')")) {
                    rs.next();
                    check("Asia/Tokyo".equals(rs.getString(2)), "TimeZone lost on " + rs.getInt(1));
                    seen.add(rs.getInt(1));
                }
            }
            check(seen.equals(replicas), "reads after a bound set_config ran on " + seen);

            try {
                s.executeQuery("SELECT 1/0");
                check(false, "division by zero");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "sqlstate " + e.getSQLState());
            }
            check(port(s) > 0, "usable after error");
        }
        System.out.println("jdbc ok");
    }
}
