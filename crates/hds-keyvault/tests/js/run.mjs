// Starts the vault test server (`sdk_test_server`, or the binary named by
// HDS_KEYVAULT_TEST_SERVER), then runs `node --test sdk.test.mjs` with the server's CA trusted
// the way a Node.js user trusts it (NODE_EXTRA_CA_CERTS, read only at start-up, hence the
// second process) and the server's description in HDS_KEYVAULT_SERVER. Stops the server by
// closing its stdin, and exits with the tests' status.
import { spawn, spawnSync } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const workspace = path.resolve(here, "../../../..");

let binary = process.env.HDS_KEYVAULT_TEST_SERVER;
if (!binary) {
  const built = spawnSync(
    "cargo",
    ["build", "-q", "-p", "hds-keyvault", "--example", "sdk_test_server"],
    { cwd: workspace, stdio: "inherit" },
  );
  if (built.status !== 0) process.exit(1);
  const target = process.env.CARGO_TARGET_DIR ?? path.join(workspace, "target");
  binary = path.join(target, "debug", "examples", "sdk_test_server");
}

const server = spawn(binary, [], { stdio: ["pipe", "pipe", "inherit"] });
const lines = createInterface({ input: server.stdout });
const [first] = await Promise.race([
  once(lines, "line"),
  once(server, "exit").then(() => {
    throw new Error("the test server exited before describing itself");
  }),
]);
const description = JSON.parse(first);

const tests = spawn(process.execPath, ["--test", path.join(here, "sdk.test.mjs")], {
  stdio: "inherit",
  env: {
    ...process.env,
    NODE_EXTRA_CA_CERTS: description.ca,
    HDS_KEYVAULT_SERVER: first,
  },
});
const [code] = await once(tests, "exit");
server.stdin.end();
const stopped = await Promise.race([
  once(server, "exit").then(() => true),
  new Promise((resolve) => setTimeout(() => resolve(false), 20_000)),
]);
if (!stopped) server.kill();
process.exit(code ?? 1);
