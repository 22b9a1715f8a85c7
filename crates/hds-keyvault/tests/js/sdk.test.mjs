// The official Azure Key Vault keys SDK for JavaScript (@azure/keyvault-keys) against hds's
// vault over real HTTPS, unmodified: the CA is trusted through NODE_EXTRA_CA_CERTS and tokens
// come from a TokenCredential, as for any vault. Run through `node run.mjs` (npm test), which
// starts the server and sets both.
import assert from "node:assert/strict";
import {
  constants,
  createHash,
  createPublicKey,
  publicEncrypt,
  randomBytes,
  randomUUID,
} from "node:crypto";
import { describe, it } from "node:test";

import { CryptographyClient, KeyClient } from "@azure/keyvault-keys";

const server = JSON.parse(process.env.HDS_KEYVAULT_SERVER ?? "null");
assert.ok(server, "run through run.mjs (npm test): it starts the vault server");

/** A TokenCredential presenting one bearer token the server's table knows. */
function credential(token) {
  return {
    async getToken() {
      return { token, expiresOnTimestamp: Date.now() + 3_600_000 };
    },
  };
}

// The vaults are on 127.0.0.1, not *.vault.azure.net: the challenge's resource is not checked
// against the host (the same option the SDK documents for private endpoints).
const options = { disableChallengeResourceVerification: true };
const poll = { intervalInMs: 50 };

function keyClient(vault = "protected", token = "officer") {
  return new KeyClient(server.vaults[vault], credential(server.tokens[token]), options);
}

function cryptoClient(keyId, token = "officer") {
  return new CryptographyClient(keyId, credential(server.tokens[token]), options);
}

/** Lifetime actions without the fields the SDK leaves undefined. */
const defined = (actions) =>
  actions.map((action) =>
    Object.fromEntries(Object.entries(action).filter(([, value]) => value !== undefined)),
  );

const unique = (prefix) => `${prefix}-${randomUUID().slice(0, 8)}`;

function publicKeyOf(key) {
  return createPublicKey({
    key: {
      kty: "RSA",
      n: Buffer.from(key.key.n).toString("base64url"),
      e: Buffer.from(key.key.e).toString("base64url"),
    },
    format: "jwk",
  });
}

describe("keys", () => {
  it("creates, gets, lists and lists versions", async () => {
    const client = keyClient();
    const name = unique("js");
    const created = await client.createRsaKey(name, { keySize: 3072, tags: { env: "test" } });
    assert.equal(created.keyType, "RSA");
    assert.equal(created.key.n.length, 384);
    assert.ok(created.id.startsWith(`${server.vaults.protected}keys/${name}/`));
    assert.equal(created.properties.tags.env, "test");
    assert.equal(created.properties.recoveryLevel, "Recoverable");
    assert.equal(created.key.d, undefined);

    const fetched = await client.getKey(name);
    assert.equal(fetched.id, created.id);
    const pinned = await client.getKey(name, { version: created.properties.version });
    assert.equal(pinned.id, created.id);

    const rotated = await client.rotateKey(name);
    assert.notEqual(rotated.properties.version, created.properties.version);
    const versions = [];
    for await (const properties of client.listPropertiesOfKeyVersions(name)) {
      versions.push(properties.version);
    }
    assert.deepEqual(versions.sort(), [created.properties.version, rotated.properties.version].sort());

    const names = [];
    for await (const properties of client.listPropertiesOfKeys()) names.push(properties.name);
    assert.ok(names.includes(name));

    const hsm = await client.createKey(unique("jshsm"), "RSA-HSM", { keySize: 2048 });
    assert.equal(hsm.keyType, "RSA-HSM");
  });

  it("lists across pages by nextLink", async () => {
    const client = keyClient("plain");
    const made = [];
    for (let index = 0; index < 3; index++) {
      made.push((await client.createRsaKey(unique("page"), { keySize: 2048 })).name);
    }
    const seen = [];
    for await (const page of client.listPropertiesOfKeys().byPage({ maxPageSize: 1 })) {
      assert.ok(page.length <= 1);
      seen.push(...page.map((properties) => properties.name));
    }
    for (const name of made) assert.ok(seen.includes(name), name);
  });

  it("updates properties and refuses a disabled key", async () => {
    const client = keyClient();
    const name = unique("disabled");
    const key = await client.createRsaKey(name, { keySize: 2048 });
    const updated = await client.updateKeyProperties(name, key.properties.version, { enabled: false });
    assert.equal(updated.properties.enabled, false);
    await assert.rejects(
      cryptoClient(key.id).unwrapKey("RSA-OAEP", Buffer.alloc(256)),
      (error) => error.statusCode === 403 || error.statusCode === 400,
    );
  });
});

describe("cryptography", () => {
  it("wraps and unwraps, cross-checked with Node's RSA", async () => {
    const client = keyClient();
    const key = await client.createRsaKey(unique("wrap"), { keySize: 2048 });
    const crypto = cryptoClient(key.id);
    const secret = randomBytes(32);
    for (const algorithm of ["RSA-OAEP", "RSA-OAEP-256", "RSA1_5"]) {
      const wrapped = await crypto.wrapKey(algorithm, secret);
      const unwrapped = await crypto.unwrapKey(algorithm, wrapped.result);
      assert.deepEqual(Buffer.from(unwrapped.result), secret, algorithm);
    }
    // Wrapped locally with the public key, unwrapped by the vault.
    const local = publicEncrypt(
      { key: publicKeyOf(key), padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: "sha256" },
      secret,
    );
    const unwrapped = await crypto.unwrapKey("RSA-OAEP-256", local);
    assert.deepEqual(Buffer.from(unwrapped.result), secret);
    // A versionless key id uses the latest version.
    const latest = cryptoClient(`${server.vaults.protected}keys/${key.name}`);
    const again = await latest.unwrapKey("RSA-OAEP-256", local);
    assert.deepEqual(Buffer.from(again.result), secret);
  });

  it("encrypts, decrypts, signs and verifies", async () => {
    const client = keyClient();
    const key = await client.createRsaKey(unique("sign"), { keySize: 2048 });
    const crypto = cryptoClient(key.id);
    const encrypted = await crypto.encrypt("RSA-OAEP", Buffer.from("hello"));
    const decrypted = await crypto.decrypt("RSA-OAEP", encrypted.result);
    assert.equal(Buffer.from(decrypted.result).toString(), "hello");
    const digest = createHash("sha256").update("the data").digest();
    for (const algorithm of ["RS256", "PS256"]) {
      const signed = await crypto.sign(algorithm, digest);
      assert.equal(signed.keyID, key.id);
      assert.equal((await crypto.verify(algorithm, digest, signed.result)).result, true, algorithm);
      const tampered = Buffer.from(signed.result);
      tampered[0] ^= 1;
      assert.equal((await crypto.verify(algorithm, digest, tampered)).result, false, algorithm);
    }
    const data = await crypto.signData("RS256", Buffer.from("the data"));
    assert.equal((await crypto.verifyData("RS256", Buffer.from("the data"), data.result)).result, true);
  });
});

describe("deletion and backups", () => {
  it("deletes, recovers, and refuses to purge under purge protection", async () => {
    const client = keyClient();
    const name = unique("recover");
    await client.createRsaKey(name, { keySize: 2048 });
    const deleting = await client.beginDeleteKey(name, poll);
    const deleted = await deleting.pollUntilDone();
    assert.equal(deleted.name, name);
    assert.ok(deleted.properties.recoveryId.endsWith(`deletedkeys/${name}`));
    assert.ok(deleted.properties.scheduledPurgeDate > new Date());
    const listed = [];
    for await (const entry of client.listDeletedKeys()) listed.push(entry.name);
    assert.ok(listed.includes(name));
    await assert.rejects(client.purgeDeletedKey(name), (error) => error.statusCode === 403);
    const recovering = await client.beginRecoverDeletedKey(name, poll);
    const recovered = await recovering.pollUntilDone();
    assert.equal(recovered.name, name);
    assert.equal((await client.getKey(name)).name, name);
  });

  it("backs up, purges and restores", async () => {
    const client = keyClient("plain");
    const name = unique("backup");
    const key = await client.createRsaKey(name, { keySize: 2048 });
    const backup = await client.backupKey(name);
    assert.ok(backup.length > 256);
    await (await client.beginDeleteKey(name, poll)).pollUntilDone();
    await client.purgeDeletedKey(name);
    await assert.rejects(client.getDeletedKey(name), (error) => error.statusCode === 404);
    const restored = await client.restoreKeyBackup(backup);
    assert.equal(restored.id, key.id);
    assert.deepEqual(Buffer.from(restored.key.n), Buffer.from(key.key.n));
  });
});

describe("rotation", () => {
  it("reads the default policy, sets one, and rotates with its expiry", async () => {
    const client = keyClient();
    const name = unique("policy");
    await client.createRsaKey(name, { keySize: 2048 });
    const initial = await client.getKeyRotationPolicy(name);
    assert.deepEqual(defined(initial.lifetimeActions), [{ action: "Notify", timeBeforeExpiry: "P30D" }]);
    assert.equal(initial.createdOn, undefined);

    const policy = await client.updateKeyRotationPolicy(name, {
      expiresIn: "P90D",
      lifetimeActions: [
        { action: "Rotate", timeAfterCreate: "P30D" },
        { action: "Notify", timeBeforeExpiry: "P7D" },
      ],
    });
    assert.equal(policy.id, `${server.vaults.protected}keys/${name}/rotationpolicy`);
    assert.equal(policy.expiresIn, "P90D");
    assert.deepEqual(defined(policy.lifetimeActions), [
      { action: "Rotate", timeAfterCreate: "P30D" },
      { action: "Notify", timeBeforeExpiry: "P7D" },
    ]);
    assert.ok(policy.createdOn instanceof Date);
    const read = await client.getKeyRotationPolicy(name);
    assert.equal(read.expiresIn, "P90D");
    assert.equal(read.lifetimeActions.length, 2);

    const rotated = await client.rotateKey(name);
    const days = (rotated.properties.expiresOn - rotated.properties.createdOn) / 86_400_000;
    assert.equal(days, 90);
  });

  it("refuses a hostile policy with a clear 400", async () => {
    const client = keyClient();
    const name = unique("hostile");
    await client.createRsaKey(name, { keySize: 2048 });
    await assert.rejects(
      client.updateKeyRotationPolicy(name, {
        lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P-3D" }],
      }),
      (error) => error.statusCode === 400 && /ISO 8601/.test(error.message),
    );
    await assert.rejects(
      client.updateKeyRotationPolicy(name, {
        lifetimeActions: [{ action: "Rotate", timeAfterCreate: "P1D" }],
      }),
      (error) => error.statusCode === 400 && /at least 7 days/.test(error.message),
    );
    await assert.rejects(client.getKeyRotationPolicy(unique("absent")), (error) => error.statusCode === 404);
  });
});

describe("random bytes and access", () => {
  it("returns fresh random bytes within Key Vault's bounds", async () => {
    const client = keyClient();
    const first = await client.getRandomBytes(32);
    const second = await client.getRandomBytes(32);
    assert.equal(first.length, 32);
    assert.notDeepEqual(Buffer.from(first), Buffer.from(second));
    await assert.rejects(client.getRandomBytes(129), (error) => error.statusCode === 400);
  });

  it("denies what RBAC does not grant", async () => {
    const name = unique("rbac");
    await keyClient().createRsaKey(name, { keySize: 2048 });
    const reader = keyClient("protected", "reader");
    assert.equal((await reader.getKey(name)).name, name);
    await assert.rejects(
      reader.createRsaKey(unique("nope"), { keySize: 2048 }),
      (error) => error.statusCode === 403 && /keys\/create\/action/.test(error.message),
    );
    await assert.rejects(reader.getKeyRotationPolicy(name), (error) => error.statusCode === 403);
  });

  it("challenges an unknown token and honours the firewall", async () => {
    await assert.rejects(
      keyClient("protected", "unknown").getKey("anything"),
      (error) => error.statusCode === 401,
    );
    await assert.rejects(
      keyClient("walled").createRsaKey(unique("walled"), { keySize: 2048 }),
      (error) => error.statusCode === 403 && /ForbiddenByFirewall|firewall|Client address/i.test(error.message + error.code),
    );
  });
});
