// What the browser tests (tests/portal, tests/viewer) share: a free loopback port, and a real
// `hds up --http` on a fresh data dir, ready once it prints "hds is ready". Plain Node, no
// dependencies, so each test package can import it.

import { spawn } from "node:child_process";
import net from "node:net";

export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/// Starts `hdsBinary up --http` on 127.0.0.1:`port` with `dataDir` and `extraArgs`. Returns the
/// child, a promise of readiness (rejected with the output if hds exits first) and its output.
export function startHds(hdsBinary, dataDir, port, extraArgs = []) {
  const args = ["up", "--http", "--data-dir", dataDir, "--listen", `127.0.0.1:${port}`, ...extraArgs];
  const child = spawn(hdsBinary, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "warn" },
  });
  let output = "";
  const ready = new Promise((resolve, reject) => {
    const onData = (chunk) => {
      output += chunk;
      if (output.includes("hds is ready")) resolve();
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", (chunk) => {
      output += chunk;
    });
    child.once("exit", (code) => reject(new Error(`hds exited (${code}) before it was ready:\n${output}`)));
  });
  return { child, ready, output: () => output };
}
