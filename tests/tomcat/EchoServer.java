// An embedded Tomcat 10 that answers every request with what the servlet
// container read from it, as one line of JSON. It stands in for the scanner
// in the differential test (tests/it/tomcat.rs): the gateway must read the
// ACTION and APPTOKEN parameters at least as strictly as this container.
//
// Build and run (Debian: libtomcat10-java, openjdk-17-jdk-headless):
//   CP=$(echo /usr/share/java/tomcat10-{servlet-api,api,catalina,coyote,util,util-scan,juli,jni,jaspic-api,annotations-api}.jar | tr ' ' :)
//   javac -cp "$CP" -d out tests/tomcat/EchoServer.java
//   java -cp "$CP:out" EchoServer          # prints PORT=<n> once listening
//
// Listens on 127.0.0.1, an ephemeral port, with the default HTTP/1.1
// connector (URIEncoding UTF-8, parseBodyMethods POST, maxPostSize 2 MB).
// Servlet "xmlapi" is mapped at /opi/XMLAPI and /opi/XMLAPI/*, servlet
// "default" at /. The context allows casual multipart parsing, so that a
// multipart/form-data body is read for parameters as a servlet with
// @MultipartConfig would: the strictest reading, for the test's sake.
// The JVM exits when its stdin reaches end of file, so that it cannot outlive
// the test process that started it.

import java.io.File;
import java.io.IOException;
import java.io.InputStream;
import java.io.PrintWriter;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Enumeration;
import java.util.List;
import java.util.Map;
import java.util.logging.Level;
import java.util.logging.Logger;

import jakarta.servlet.http.HttpServlet;
import jakarta.servlet.http.HttpServletRequest;
import jakarta.servlet.http.HttpServletResponse;

import org.apache.catalina.Context;
import org.apache.catalina.connector.Connector;
import org.apache.catalina.startup.Tomcat;

public class EchoServer {

    /** Answers 200 with a JSON description of what Tomcat read. */
    static final class Echo extends HttpServlet {
        private static final long serialVersionUID = 1L;
        private final String name;

        Echo(String name) {
            this.name = name;
        }

        @Override
        protected void service(HttpServletRequest req, HttpServletResponse resp) throws IOException {
            StringBuilder j = new StringBuilder(512);
            j.append("{\"echo\":\"tomcat\",\"servlet\":").append(str(name));
            j.append(",\"method\":").append(str(req.getMethod()));
            j.append(",\"requestURI\":").append(str(req.getRequestURI()));
            j.append(",\"servletPath\":").append(str(req.getServletPath()));
            j.append(",\"pathInfo\":").append(str(req.getPathInfo()));
            j.append(",\"queryString\":").append(str(req.getQueryString()));
            j.append(",\"contentType\":").append(str(req.getContentType()));
            j.append(",\"xForwardedFor\":").append(str(req.getHeader("X-Forwarded-For")));
            String error = null;
            try {
                // getParameter first: this is what makes Tomcat parse the
                // query and, for a form or multipart POST, the body.
                String action = req.getParameter("ACTION");
                j.append(",\"characterEncoding\":").append(str(req.getCharacterEncoding()));
                j.append(",\"action\":").append(str(action));
                j.append(",\"actionValues\":").append(arr(req.getParameterValues("ACTION")));
                j.append(",\"apptoken\":").append(str(req.getParameter("APPTOKEN")));
                j.append(",\"apptokenValues\":").append(arr(req.getParameterValues("APPTOKEN")));
                Map<String, String[]> map = req.getParameterMap();
                List<String> names = new ArrayList<>();
                for (Enumeration<String> e = req.getParameterNames(); e.hasMoreElements();) {
                    names.add(e.nextElement());
                }
                j.append(",\"parameterNames\":").append(arr(names.toArray(new String[0])));
                j.append(",\"parameters\":{");
                boolean first = true;
                for (Map.Entry<String, String[]> e : map.entrySet()) {
                    if (!first) {
                        j.append(',');
                    }
                    first = false;
                    j.append(str(e.getKey())).append(':').append(arr(e.getValue()));
                }
                j.append('}');
            } catch (RuntimeException e) {
                error = e.toString();
            }
            j.append(",\"error\":").append(str(error));
            // What was left of the body after parameter parsing (a body that
            // was not parsed is still there), at most 4 KiB, as Latin-1.
            byte[] rest = readUpTo(req.getInputStream(), 4096);
            j.append(",\"bodyRest\":").append(str(new String(rest, java.nio.charset.StandardCharsets.ISO_8859_1)));
            j.append("}\n");
            byte[] out = j.toString().getBytes(java.nio.charset.StandardCharsets.US_ASCII);
            // The essentials again as headers, for answers without a body
            // (HEAD): X-Echo-Action is a JSON string or null,
            // X-Echo-Apptoken a JSON array or null.
            resp.setHeader("X-Echo-Servlet", name);
            resp.setHeader("X-Echo-Path", str(req.getServletPath() + (req.getPathInfo() == null ? "" : req.getPathInfo())));
            if (error == null) {
                resp.setHeader("X-Echo-Action", clip(str(req.getParameter("ACTION"))));
                resp.setHeader("X-Echo-Apptoken", clip(arr(req.getParameterValues("APPTOKEN"))));
            }
            resp.setStatus(error == null ? 200 : 500);
            resp.setContentType("application/json");
            resp.setContentLength(out.length);
            resp.getOutputStream().write(out);
        }
    }

    static byte[] readUpTo(InputStream in, int max) {
        try {
            byte[] buf = new byte[max];
            int n = 0;
            while (n < max) {
                int r = in.read(buf, n, max - n);
                if (r < 0) {
                    break;
                }
                n += r;
            }
            return java.util.Arrays.copyOf(buf, n);
        } catch (IOException | RuntimeException e) {
            return new byte[0];
        }
    }

    /** A header value of bounded size; an overlong one is marked as such. */
    static String clip(String s) {
        return s.length() <= 2000 ? s : "\"(too long)\"";
    }

    static String arr(String[] v) {
        if (v == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder("[");
        for (int i = 0; i < v.length; i++) {
            if (i > 0) {
                b.append(',');
            }
            b.append(str(v[i]));
        }
        return b.append(']').toString();
    }

    /** A JSON string, all ASCII: everything else as \\uXXXX; a lone surrogate as U+FFFD. */
    static String str(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c >= 0x20 && c < 0x7f) {
                b.append(c);
            } else if (Character.isHighSurrogate(c) && i + 1 < s.length()
                    && Character.isLowSurrogate(s.charAt(i + 1))) {
                b.append(String.format("\\u%04x\\u%04x", (int) c, (int) s.charAt(i + 1)));
                i++;
            } else if (Character.isSurrogate(c)) {
                b.append("\\ufffd");
            } else {
                b.append(String.format("\\u%04x", (int) c));
            }
        }
        return b.append('"').toString();
    }

    @SuppressWarnings("deprecation") // addServletMappingDecoded: still the way in Tomcat 10.1
    public static void main(String[] args) throws Exception {
        Logger.getLogger("").setLevel(Level.WARNING);
        Logger.getLogger("org.apache").setLevel(Level.WARNING);

        File base = Files.createTempDirectory("tomcat-echo").toFile();
        base.deleteOnExit();
        Tomcat tomcat = new Tomcat();
        tomcat.setBaseDir(base.getAbsolutePath());

        Connector connector = new Connector(); // HTTP/1.1, NIO, defaults
        connector.setPort(0);
        connector.setProperty("address", "127.0.0.1");
        tomcat.getService().addConnector(connector);
        tomcat.setConnector(connector);

        Context ctx = tomcat.addContext("", base.getAbsolutePath());
        ctx.setAllowCasualMultipartParsing(true);
        Tomcat.addServlet(ctx, "xmlapi", new Echo("xmlapi"));
        ctx.addServletMappingDecoded("/opi/XMLAPI", "xmlapi");
        ctx.addServletMappingDecoded("/opi/XMLAPI/*", "xmlapi");
        Tomcat.addServlet(ctx, "default", new Echo("default"));
        ctx.addServletMappingDecoded("/", "default");

        tomcat.start();
        int port = connector.getLocalPort();
        if (port <= 0) {
            System.err.println("EchoServer: the connector did not start");
            System.exit(2);
        }
        System.out.println("PORT=" + port);
        System.out.flush();

        // Exit when the parent closes our stdin (or dies).
        Thread watchdog = new Thread(() -> {
            try {
                while (System.in.read() >= 0) {
                    // keep reading
                }
            } catch (IOException e) {
                // parent gone
            }
            System.exit(0);
        }, "stdin-watchdog");
        watchdog.setDaemon(true);
        watchdog.start();

        tomcat.getServer().await();
    }
}
