// What the browser tests (tests/portal, tests/viewer) share: a free loopback port, and a real
// `hds up --http` on a fresh data dir, ready once it prints "hds is ready". Plain Node, no
// dependencies, so each test package can import it.

import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import net from "node:net";

/// A port free on 127.0.0.1 for a server started next, chosen below the kernel's ephemeral
/// range: a port the kernel picks there (listen on port 0) may become, before hds binds it, the
/// source port of some outgoing connection, and hds's bind then fails.
export async function freePort() {
  let floor = 32768;
  try {
    floor = Number(readFileSync("/proc/sys/net/ipv4/ip_local_port_range", "utf8").trim().split(/\s+/)[0]) || floor;
  } catch {
    // Not Linux: the usual floor.
  }
  const low = Math.max(1024, floor - 20000);
  for (let attempt = 0; attempt < 1000; attempt++) {
    const port = low + Math.floor(Math.random() * (floor - low));
    if (handedOut.has(port)) continue;
    if (await bindable(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error(`no free port in ${low}-${floor - 1}`);
}

const handedOut = new Set();

function bindable(port) {
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once("error", () => resolve(false));
    probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
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
