import {
  CancelKeyDeletionCommand,
  CreateAliasCommand,
  CreateKeyCommand,
  DecryptCommand,
  DescribeKeyCommand,
  DisableKeyCommand,
  EnableKeyCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GenerateDataKeyWithoutPlaintextCommand,
  GenerateMacCommand,
  KMSClient,
  ListAliasesCommand,
  ListKeysCommand,
  ListResourceTagsCommand,
  ReEncryptCommand,
  ScheduleKeyDeletionCommand,
  TagResourceCommand,
  VerifyMacCommand,
  CreateGrantCommand,
} from '@aws-sdk/client-kms';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { KeyStore, type RunningEmulator, startEmulator } from '../src/kms/emulator/index.js';

function clientFor(emulator: RunningEmulator): KMSClient {
  return new KMSClient({
    endpoint: emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDTEST', secretAccessKey: 'test' },
    maxAttempts: 1,
  });
}

/** Awaits a call that must fail and checks the SDK error's name and HTTP status, one assert each. */
async function expectKmsError(call: Promise<unknown>, name: string, status = 400): Promise<void> {
  const error = (await call.then(
    () => undefined,
    (caught: unknown) => caught,
  )) as { name: string; $metadata?: { httpStatusCode?: number } } | undefined;
  expect(error, `expected ${name}, but the call succeeded`).toBeDefined();
  expect(error?.name).toBe(name);
  expect(error?.$metadata?.httpStatusCode).toBe(status);
}

const CONTEXT = { table: 'users', column: 'dek', id: '42' };

let emulator: RunningEmulator;
let kms: KMSClient;

beforeAll(async () => {
  emulator = await startEmulator();
  kms = clientFor(emulator);
});

afterAll(async () => {
  kms.destroy();
  await emulator.close();
});

async function createKey(description = 'test key'): Promise<{ keyId: string; arn: string }> {
  const created = await kms.send(new CreateKeyCommand({ Description: description }));
  return { keyId: created.KeyMetadata?.KeyId as string, arn: created.KeyMetadata?.Arn as string };
}

async function encrypt(keyId: string, plaintext = 'data key bytes', context: Record<string, string> = CONTEXT): Promise<Uint8Array> {
  const result = await kms.send(new EncryptCommand({ KeyId: keyId, Plaintext: Buffer.from(plaintext), EncryptionContext: context }));
  return result.CiphertextBlob as Uint8Array;
}

describe('key management', () => {
  it('CreateKey returns AWS KeyMetadata', async () => {
    const created = await kms.send(new CreateKeyCommand({ Description: 'orders', Tags: [{ TagKey: 'team', TagValue: 'payments' }] }));
    const metadata = created.KeyMetadata;

    expect(metadata?.KeyId).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
    expect(metadata?.Arn).toBe(`arn:aws:kms:us-east-1:111122223333:key/${metadata?.KeyId}`);
    expect(metadata?.AWSAccountId).toBe('111122223333');
    expect(metadata?.Description).toBe('orders');
    expect(metadata?.Enabled).toBe(true);
    expect(metadata?.KeyState).toBe('Enabled');
    expect(metadata?.KeyUsage).toBe('ENCRYPT_DECRYPT');
    expect(metadata?.KeySpec).toBe('SYMMETRIC_DEFAULT');
    expect(metadata?.CustomerMasterKeySpec).toBe('SYMMETRIC_DEFAULT');
    expect(metadata?.EncryptionAlgorithms).toEqual(['SYMMETRIC_DEFAULT']);
    expect(metadata?.Origin).toBe('AWS_KMS');
    expect(metadata?.KeyManager).toBe('CUSTOMER');
    expect(metadata?.MultiRegion).toBe(false);
    expect(metadata?.CreationDate).toBeInstanceOf(Date);
  });

  it('DescribeKey accepts id, ARN and alias', async () => {
    const key = await createKey();
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/describe-me', TargetKeyId: key.keyId }));
    const references = [key.keyId, key.arn, 'alias/describe-me', 'arn:aws:kms:us-east-1:111122223333:alias/describe-me'];

    for (const reference of references) {
      const described = await kms.send(new DescribeKeyCommand({ KeyId: reference }));
      expect(described.KeyMetadata?.KeyId, reference).toBe(key.keyId);
    }
  });

  it('DescribeKey of unknown key is NotFoundException', async () => {
    await expectKmsError(kms.send(new DescribeKeyCommand({ KeyId: '00000000-0000-0000-0000-000000000000' })), 'NotFoundException');
    await expectKmsError(kms.send(new DescribeKeyCommand({ KeyId: 'alias/does-not-exist' })), 'NotFoundException');
    await expectKmsError(kms.send(new DescribeKeyCommand({ KeyId: 'arn:aws:kms:eu-west-1:111122223333:key/00000000-0000-0000-0000-000000000000' })), 'NotFoundException');
  });

  it('ListKeys pages with Limit and Marker', async () => {
    for (let i = 0; i < 3; i++) await createKey();
    const all = (await kms.send(new ListKeysCommand({ Limit: 1000 }))).Keys ?? [];

    const first = await kms.send(new ListKeysCommand({ Limit: 2 }));
    expect(first.Keys).toHaveLength(2);
    expect(first.Truncated).toBe(true);
    expect(first.NextMarker).toBeDefined();

    const seen = [...(first.Keys ?? [])];
    let marker = first.NextMarker;
    while (marker !== undefined) {
      const page = await kms.send(new ListKeysCommand({ Limit: 2, Marker: marker }));
      seen.push(...(page.Keys ?? []));
      marker = page.Truncated === true ? page.NextMarker : undefined;
    }
    expect(seen.map((key) => key.KeyId)).toEqual(all.map((key) => key.KeyId));
    expect(all[0]?.KeyArn).toBe(`arn:aws:kms:us-east-1:111122223333:key/${all[0]?.KeyId}`);
  });

  it('CreateAlias rejects a duplicate and lists', async () => {
    const key = await createKey();
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/orders', TargetKeyId: key.arn }));

    await expectKmsError(kms.send(new CreateAliasCommand({ AliasName: 'alias/orders', TargetKeyId: key.keyId })), 'AlreadyExistsException');
    await expectKmsError(kms.send(new CreateAliasCommand({ AliasName: 'orders', TargetKeyId: key.keyId })), 'ValidationException');

    const listed = await kms.send(new ListAliasesCommand({ KeyId: key.keyId }));
    expect(listed.Aliases).toHaveLength(1);
    expect(listed.Aliases?.[0]?.AliasName).toBe('alias/orders');
    expect(listed.Aliases?.[0]?.AliasArn).toBe('arn:aws:kms:us-east-1:111122223333:alias/orders');
    expect(listed.Aliases?.[0]?.TargetKeyId).toBe(key.keyId);
    expect(listed.Truncated).toBe(false);
  });

  it('TagResource and ListResourceTags', async () => {
    const key = await createKey();
    await kms.send(new TagResourceCommand({ KeyId: key.keyId, Tags: [{ TagKey: 'env', TagValue: 'test' }] }));
    await kms.send(new TagResourceCommand({ KeyId: key.keyId, Tags: [{ TagKey: 'env', TagValue: 'prod' }, { TagKey: 'owner', TagValue: 'rewrap' }] }));

    const tags = await kms.send(new ListResourceTagsCommand({ KeyId: key.keyId }));
    expect(tags.Tags).toEqual([{ TagKey: 'env', TagValue: 'prod' }, { TagKey: 'owner', TagValue: 'rewrap' }]);
    await expectKmsError(kms.send(new TagResourceCommand({ KeyId: key.keyId, Tags: [{ TagKey: 'aws:reserved', TagValue: 'x' }] })), 'TagException');
  });

  it('unimplemented operation is UnsupportedOperationException', async () => {
    const key = await createKey();
    await expectKmsError(
      kms.send(new CreateGrantCommand({ KeyId: key.keyId, GranteePrincipal: 'arn:aws:iam::111122223333:role/x', Operations: ['Decrypt'] })),
      'UnsupportedOperationException',
    );
  });

  it('unknown target is UnknownOperationException', async () => {
    const response = await fetch(emulator.url, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-amz-json-1.1', 'X-Amz-Target': 'TrentService.Frobnicate' },
      body: '{}',
    });
    const body = (await response.json()) as { __type: string };

    expect(response.status).toBe(400);
    expect(body.__type).toBe('UnknownOperationException');
    expect(response.headers.get('x-amzn-errortype')).toBe('UnknownOperationException');
  });
});

describe('key states', () => {
  it('disabled key is DisabledException', async () => {
    const key = await createKey();
    const other = await createKey();
    const blob = await encrypt(key.keyId);
    await kms.send(new DisableKeyCommand({ KeyId: key.keyId }));

    const described = await kms.send(new DescribeKeyCommand({ KeyId: key.keyId }));
    expect(described.KeyMetadata?.KeyState).toBe('Disabled');
    expect(described.KeyMetadata?.Enabled).toBe(false);
    await expectKmsError(encrypt(key.keyId), 'DisabledException');
    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: CONTEXT })), 'DisabledException');
    await expectKmsError(
      kms.send(new ReEncryptCommand({ CiphertextBlob: await encrypt(other.keyId), SourceEncryptionContext: CONTEXT, DestinationKeyId: key.keyId })),
      'DisabledException',
    );

    await kms.send(new EnableKeyCommand({ KeyId: key.keyId }));
    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: CONTEXT }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).toString()).toBe('data key bytes');
  });

  it('pending deletion is KMSInvalidStateException', async () => {
    const key = await createKey();
    const blob = await encrypt(key.keyId);
    const scheduled = await kms.send(new ScheduleKeyDeletionCommand({ KeyId: key.keyId, PendingWindowInDays: 7 }));

    expect(scheduled.KeyState).toBe('PendingDeletion');
    expect(scheduled.PendingWindowInDays).toBe(7);
    expect(scheduled.KeyId).toBe(key.arn);
    const days = ((scheduled.DeletionDate as Date).getTime() - Date.now()) / 86_400_000;
    expect(days).toBeGreaterThan(6.99);
    expect(days).toBeLessThanOrEqual(7);

    const described = await kms.send(new DescribeKeyCommand({ KeyId: key.keyId }));
    expect(described.KeyMetadata?.KeyState).toBe('PendingDeletion');
    expect(described.KeyMetadata?.PendingDeletionWindowInDays).toBe(7);
    await expectKmsError(encrypt(key.keyId), 'KMSInvalidStateException');
    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: CONTEXT })), 'KMSInvalidStateException');
    await expectKmsError(kms.send(new EnableKeyCommand({ KeyId: key.keyId })), 'KMSInvalidStateException');
  });

  it('CancelKeyDeletion leaves the key disabled', async () => {
    const key = await createKey();
    await kms.send(new ScheduleKeyDeletionCommand({ KeyId: key.keyId }));
    await kms.send(new CancelKeyDeletionCommand({ KeyId: key.keyId }));

    const described = await kms.send(new DescribeKeyCommand({ KeyId: key.keyId }));
    expect(described.KeyMetadata?.KeyState).toBe('Disabled');
    expect(described.KeyMetadata?.DeletionDate).toBeUndefined();
    await expectKmsError(kms.send(new CancelKeyDeletionCommand({ KeyId: key.keyId })), 'KMSInvalidStateException');
  });

  it('ScheduleKeyDeletion window outside 7..30 is invalid', async () => {
    const key = await createKey();
    await expectKmsError(kms.send(new ScheduleKeyDeletionCommand({ KeyId: key.keyId, PendingWindowInDays: 6 })), 'ValidationException');
    await expectKmsError(kms.send(new ScheduleKeyDeletionCommand({ KeyId: key.keyId, PendingWindowInDays: 31 })), 'ValidationException');

    const scheduled = await kms.send(new ScheduleKeyDeletionCommand({ KeyId: key.keyId }));
    expect(scheduled.PendingWindowInDays).toBe(30);
  });

  it('key past DeletionDate is deleted', () => {
    let nowMs = Date.parse('2030-01-01T00:00:00Z');
    const store = new KeyStore({ now: () => nowMs });
    const key = store.createKey();
    store.createAlias('alias/doomed', key.keyId);
    const blob = Buffer.from(store.wrapLocally(key.keyId, Buffer.from('x'), {}));
    store.scheduleKeyDeletion(key.keyId, 7);

    nowMs += 7 * 86_400_000 - 1000;
    expect(store.resolveKey(key.keyId).state).toBe('PendingDeletion');

    nowMs += 1000;
    expect(() => store.resolveKey(key.keyId)).toThrow(expect.objectContaining({ name: 'NotFoundException' }));
    expect(() => store.keyForBlob(blob)).toThrow(expect.objectContaining({ name: 'NotFoundException' }));
    expect(store.listAliases()).toEqual([]);
    expect(store.listKeys()).toEqual([]);
  });
});

describe('cryptographic operations', () => {
  it('Encrypt and Decrypt round trip', async () => {
    const key = await createKey();
    const encrypted = await kms.send(new EncryptCommand({ KeyId: key.keyId, Plaintext: Buffer.from('hello'), EncryptionContext: CONTEXT }));
    expect(encrypted.KeyId).toBe(key.arn);
    expect(encrypted.EncryptionAlgorithm).toBe('SYMMETRIC_DEFAULT');
    expect(encrypted.CiphertextBlob?.length).toBe(1 + 16 + 12 + 5 + 16);

    const reordered = { id: '42', column: 'dek', table: 'users' };
    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: encrypted.CiphertextBlob, EncryptionContext: reordered }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).toString()).toBe('hello');
    expect(decrypted.KeyId).toBe(key.arn);
  });

  it('Encrypt resolves alias name and ARN', async () => {
    const key = await createKey();
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/encrypt-target', TargetKeyId: key.keyId }));

    for (const reference of ['alias/encrypt-target', 'arn:aws:kms:us-east-1:111122223333:alias/encrypt-target']) {
      const encrypted = await kms.send(new EncryptCommand({ KeyId: reference, Plaintext: Buffer.from('x') }));
      expect(encrypted.KeyId, reference).toBe(key.arn);
    }
  });

  it('Decrypt with wrong context is InvalidCiphertextException', async () => {
    const key = await createKey();
    const blob = await encrypt(key.keyId);

    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: { ...CONTEXT, id: '43' } })), 'InvalidCiphertextException');
    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob })), 'InvalidCiphertextException');
  });

  it('tampered blob is InvalidCiphertextException', async () => {
    const key = await createKey();
    const other = await createKey();
    const blob = Buffer.from(await encrypt(key.keyId));
    const cases: Array<[string, (copy: Buffer) => void]> = [
      ['version byte', (copy) => { copy[0] = 2; }],
      ['key id byte', (copy) => { copy[5] = (copy[5] ?? 0) ^ 1; }],
      ['IV byte', (copy) => { copy[20] = (copy[20] ?? 0) ^ 1; }],
      ['ciphertext byte', (copy) => { copy[30] = (copy[30] ?? 0) ^ 1; }],
      ['tag byte', (copy) => { copy[copy.length - 1] = (copy[copy.length - 1] ?? 0) ^ 1; }],
      ['header naming another key', (copy) => { Buffer.from(other.keyId.replace(/-/g, ''), 'hex').copy(copy, 1); }],
    ];

    for (const [, tamper] of cases) {
      const copy = Buffer.from(blob);
      tamper(copy);
      await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: copy, EncryptionContext: CONTEXT })), 'InvalidCiphertextException');
    }
    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob.subarray(0, 40) })), 'InvalidCiphertextException');
  });

  it('size limits are ValidationException', async () => {
    const key = await createKey();
    await expectKmsError(kms.send(new EncryptCommand({ KeyId: key.keyId, Plaintext: Buffer.alloc(4097) })), 'ValidationException');
    await expectKmsError(kms.send(new EncryptCommand({ KeyId: key.keyId, Plaintext: Buffer.alloc(0) })), 'ValidationException');
    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: Buffer.alloc(6145, 1) })), 'ValidationException');

    const largest = await kms.send(new EncryptCommand({ KeyId: key.keyId, Plaintext: Buffer.alloc(4096, 1) }));
    expect(largest.CiphertextBlob?.length).toBe(4096 + 45);
  });

  it('Decrypt with another KeyId is IncorrectKeyException', async () => {
    const key = await createKey();
    const other = await createKey();
    const blob = await encrypt(key.keyId);

    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: CONTEXT, KeyId: other.keyId })), 'IncorrectKeyException');
    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: CONTEXT, KeyId: key.arn }));
    expect(decrypted.KeyId).toBe(key.arn);
  });

  it('ReEncrypt moves a blob to another key', async () => {
    const source = await createKey();
    const destination = await createKey();
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/rewrap-destination', TargetKeyId: destination.keyId }));
    const blob = await encrypt(source.keyId, 'secret dek');

    const rewrapped = await kms.send(new ReEncryptCommand({
      CiphertextBlob: blob,
      SourceKeyId: source.keyId,
      SourceEncryptionContext: CONTEXT,
      DestinationKeyId: 'alias/rewrap-destination',
      DestinationEncryptionContext: CONTEXT,
    }));
    expect(rewrapped.SourceKeyId).toBe(source.arn);
    expect(rewrapped.KeyId).toBe(destination.arn);
    expect(rewrapped.SourceEncryptionAlgorithm).toBe('SYMMETRIC_DEFAULT');
    expect(rewrapped.DestinationEncryptionAlgorithm).toBe('SYMMETRIC_DEFAULT');

    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: rewrapped.CiphertextBlob, EncryptionContext: CONTEXT }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).toString()).toBe('secret dek');
    expect(decrypted.KeyId).toBe(destination.arn);
  });

  it('ReEncrypt with another SourceKeyId is IncorrectKeyException', async () => {
    const source = await createKey();
    const other = await createKey();
    const blob = await encrypt(source.keyId);

    await expectKmsError(
      kms.send(new ReEncryptCommand({ CiphertextBlob: blob, SourceKeyId: other.keyId, SourceEncryptionContext: CONTEXT, DestinationKeyId: other.keyId })),
      'IncorrectKeyException',
    );
  });

  it('ReEncrypt to unknown destination is NotFoundException', async () => {
    const source = await createKey();
    const blob = await encrypt(source.keyId);

    await expectKmsError(
      kms.send(new ReEncryptCommand({ CiphertextBlob: blob, SourceEncryptionContext: CONTEXT, DestinationKeyId: 'alias/missing' })),
      'NotFoundException',
    );
  });

  it('GenerateDataKey returns a decryptable key', async () => {
    const key = await createKey();
    const generated = await kms.send(new GenerateDataKeyCommand({ KeyId: key.keyId, KeySpec: 'AES_256', EncryptionContext: CONTEXT }));
    expect(generated.Plaintext?.length).toBe(32);
    expect(generated.KeyId).toBe(key.arn);

    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: generated.CiphertextBlob, EncryptionContext: CONTEXT }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).equals(Buffer.from(generated.Plaintext as Uint8Array))).toBe(true);

    const withoutPlaintext = await kms.send(new GenerateDataKeyWithoutPlaintextCommand({ KeyId: key.keyId, NumberOfBytes: 16 }));
    expect(withoutPlaintext.CiphertextBlob?.length).toBe(16 + 45);
    expect((withoutPlaintext as { Plaintext?: unknown }).Plaintext).toBeUndefined();
    await expectKmsError(kms.send(new GenerateDataKeyCommand({ KeyId: key.keyId })), 'ValidationException');
  });

  it('GenerateMac and VerifyMac', async () => {
    const created = await kms.send(new CreateKeyCommand({ KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }));
    const keyId = created.KeyMetadata?.KeyId as string;
    expect(created.KeyMetadata?.MacAlgorithms).toEqual(['HMAC_SHA_256']);
    expect(created.KeyMetadata?.KeySpec).toBe('HMAC_256');

    const message = Buffer.from('token');
    const generated = await kms.send(new GenerateMacCommand({ KeyId: keyId, Message: message, MacAlgorithm: 'HMAC_SHA_256' }));
    expect(generated.Mac?.length).toBe(32);

    const verified = await kms.send(new VerifyMacCommand({ KeyId: keyId, Message: message, Mac: generated.Mac, MacAlgorithm: 'HMAC_SHA_256' }));
    expect(verified.MacValid).toBe(true);
    await expectKmsError(
      kms.send(new VerifyMacCommand({ KeyId: keyId, Message: Buffer.from('other'), Mac: generated.Mac, MacAlgorithm: 'HMAC_SHA_256' })),
      'KMSInvalidMacException',
    );
  });

  it('wrong key usage is InvalidKeyUsageException', async () => {
    const hmac = await kms.send(new CreateKeyCommand({ KeySpec: 'HMAC_256', KeyUsage: 'GENERATE_VERIFY_MAC' }));
    const symmetric = await createKey();

    await expectKmsError(encrypt(hmac.KeyMetadata?.KeyId as string), 'InvalidKeyUsageException');
    await expectKmsError(
      kms.send(new GenerateMacCommand({ KeyId: symmetric.keyId, Message: Buffer.from('m'), MacAlgorithm: 'HMAC_SHA_256' })),
      'InvalidKeyUsageException',
    );
    await expectKmsError(
      kms.send(new GenerateMacCommand({ KeyId: hmac.KeyMetadata?.KeyId, Message: Buffer.from('m'), MacAlgorithm: 'HMAC_SHA_512' })),
      'InvalidKeyUsageException',
    );
  });
});

describe('seeding paths', () => {
  it('wrapLocally output decrypts through the API', async () => {
    const key = await createKey();
    const blob = emulator.store.wrapLocally(key.keyId, Buffer.from('seeded'), CONTEXT);

    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: CONTEXT }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).toString()).toBe('seeded');
  });

  it('wrap-batch endpoint returns decryptable blobs', async () => {
    const key = await createKey();
    await kms.send(new CreateAliasCommand({ AliasName: 'alias/seed', TargetKeyId: key.keyId }));
    const items = [0, 1, 2].map((i) => ({ Plaintext: Buffer.from(`dek-${i}`).toString('base64'), EncryptionContext: { id: String(i) } }));

    const response = await fetch(`${emulator.url}/_emulator/wrap-batch`, { method: 'POST', body: JSON.stringify({ KeyId: 'alias/seed', Items: items }) });
    const body = (await response.json()) as { KeyId: string; CiphertextBlobs: string[] };
    expect(response.status).toBe(200);
    expect(body.KeyId).toBe(key.arn);
    expect(body.CiphertextBlobs).toHaveLength(3);

    const blob = Buffer.from(body.CiphertextBlobs[2] as string, 'base64');
    const decrypted = await kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: { id: '2' } }));
    expect(Buffer.from(decrypted.Plaintext as Uint8Array).toString()).toBe('dek-2');
  });

  it('wrap-batch rejects more than 10000 items', async () => {
    const key = await createKey();
    const items = Array.from({ length: 10_001 }, () => ({ Plaintext: 'AA==' }));

    const response = await fetch(`${emulator.url}/_emulator/wrap-batch`, { method: 'POST', body: JSON.stringify({ KeyId: key.keyId, Items: items }) });
    const body = (await response.json()) as { __type: string };
    expect(response.status).toBe(400);
    expect(body.__type).toBe('ValidationException');
  });
});

describe('request log', () => {
  it('records context and principal, not secrets', async () => {
    const key = await createKey();
    const plaintext = 'plaintext-that-must-not-be-logged';
    const context = { tenant: 'acme', purpose: 'request-log-test' };
    const blob = await encrypt(key.keyId, plaintext, context);
    await expectKmsError(kms.send(new DecryptCommand({ CiphertextBlob: blob, EncryptionContext: { tenant: 'other' } })), 'InvalidCiphertextException');

    const events = emulator.requestLog().filter((event) => (event.requestParameters?.encryptionContext as { purpose?: string } | undefined)?.purpose === 'request-log-test');
    const encryptEvent = events.find((event) => event.eventName === 'Encrypt');
    expect(encryptEvent?.requestParameters?.keyId).toBe(key.keyId);
    expect(encryptEvent?.userIdentity.accessKeyId).toBe('AKIDTEST');
    expect(encryptEvent?.userIdentity.arn).toBe('arn:aws:iam::111122223333:user/AKIDTEST');
    expect(encryptEvent?.eventSource).toBe('kms.amazonaws.com');
    expect(encryptEvent?.resources).toEqual([{ accountId: '111122223333', type: 'AWS::KMS::Key', ARN: key.arn }]);
    expect(encryptEvent?.errorCode).toBeUndefined();

    const decryptEvent = emulator.requestLog().findLast((event) => event.eventName === 'Decrypt');
    expect(decryptEvent?.requestParameters?.encryptionContext).toEqual({ tenant: 'other' });
    expect(decryptEvent?.errorCode).toBe('InvalidCiphertextException');

    const serialized = JSON.stringify(emulator.requestLog());
    expect(serialized).not.toContain(Buffer.from(plaintext).toString('base64'));
    expect(serialized).not.toContain(Buffer.from(blob).toString('base64'));
  });

  it('is served over HTTP', async () => {
    await createKey('served log');
    const response = await fetch(`${emulator.url}/_emulator/request-log`);
    const events = (await response.json()) as Array<{ eventName: string; responseElements: { keyMetadata?: { Description?: string } } | null }>;

    expect(response.status).toBe(200);
    expect(events.some((event) => event.eventName === 'CreateKey' && event.responseElements?.keyMetadata?.Description === 'served log')).toBe(true);
  });
});
