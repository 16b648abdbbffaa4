import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;

/**
 * The auth service: middle hop of the zero-code chain. JDK only, no OpenTelemetry.
 *
 * <p>GET /work?&lt;query&gt; forwards the query to $NEXT_URL/work and answers 200 with the next
 * hop's body, or 502 when the next hop failed. Listens on 127.0.0.1:$PORT and prints "READY
 * &lt;port&gt;" once it does.
 */
public final class Auth {
  private static final HttpClient CLIENT =
      HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1).build();

  public static void main(String[] args) throws IOException {
    int port = Integer.parseInt(System.getenv("PORT"));
    String next = System.getenv("NEXT_URL");
    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 0);
    server.setExecutor(Executors.newFixedThreadPool(8));
    server.createContext("/work", exchange -> handle(exchange, next));
    server.start();
    System.out.println("READY " + server.getAddress().getPort());
  }

  private static void handle(HttpExchange exchange, String next) throws IOException {
    String query = exchange.getRequestURI().getRawQuery();
    URI uri = URI.create(next + "/work" + (query == null ? "" : "?" + query));
    int status;
    byte[] body;
    try {
      HttpResponse<byte[]> reply =
          CLIENT.send(HttpRequest.newBuilder(uri).GET().build(), HttpResponse.BodyHandlers.ofByteArray());
      boolean ok = reply.statusCode() >= 200 && reply.statusCode() < 300;
      status = ok ? 200 : 502;
      body = ok ? reply.body() : ("next hop answered " + reply.statusCode() + "\n").getBytes(StandardCharsets.UTF_8);
    } catch (IOException | InterruptedException e) {
      status = 502;
      body = ("next hop unreachable: " + e + "\n").getBytes(StandardCharsets.UTF_8);
    }
    exchange.getResponseHeaders().set("content-type", "text/plain");
    exchange.sendResponseHeaders(status, body.length);
    try (OutputStream out = exchange.getResponseBody()) {
      out.write(body);
    }
  }
}
