// A tiny HTTP service: answers with its instance id (no dependencies).
const http = require("http");

const port = Number(process.env.PORT || 3000);
const instance = process.env.AETHER_INSTANCE_ID || "local";

const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "Content-Type": "text/plain" });
    res.end("ok\n");
    return;
  }
  const body = JSON.stringify({ message: "Hello from Node.js on Aether", instance, path: req.url });
  res.writeHead(200, { "Content-Type": "application/json" });
  res.end(body);
});

server.listen(port, "127.0.0.1", () => console.log(`${instance} listening on ${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
