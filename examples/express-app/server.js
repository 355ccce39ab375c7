// A small Express service: JSON greeting with the instance id, a health route,
// request logging (morgan) and a human-readable uptime (ms).
const express = require("express");
const morgan = require("morgan");
const ms = require("ms");

const port = Number(process.env.PORT || 3000);
const instance = process.env.AETHER_INSTANCE_ID || "local";
const started = Date.now();

const app = express();
app.use(morgan("tiny"));

app.get("/healthz", (req, res) => {
  res.type("text/plain").send("ok\n");
});

app.get("/", (req, res) => {
  res.json({
    message: "Hello from Express on Aether",
    instance,
    uptime: ms(Date.now() - started),
  });
});

app.use((req, res) => {
  res.status(404).json({ error: "not found", path: req.path, instance });
});

const server = app.listen(port, "127.0.0.1", () => {
  console.log(`${instance} listening on 127.0.0.1:${port}`);
});

process.on("SIGTERM", () => server.close(() => process.exit(0)));
