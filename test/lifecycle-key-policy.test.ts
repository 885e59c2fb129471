import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CreateKeyCommand,
  DecryptCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GetKeyPolicyCommand,
  KMSClient,
  PutKeyPolicyCommand,
} from '@aws-sdk/client-kms';
import { denyStatementSid, KeyPolicyAccess, RotationPrincipalPolicyAccess } from '../src/lifecycle/access.js';
import { startTestKms, type TestKms } from './helpers/kms.js';

const rotationArn = 'arn:aws:iam::111122223333:user/AKIDTESTADMIN';

let kms: TestKms;
let application: KMSClient;
let keyArn: string;
let blob: Uint8Array;

const errorName = (promise: Promise<unknown>) => promise.then(() => 'resolved', (error: unknown) => (error as Error).name);

async function statements(): Promise<Array<{ Sid?: string; Effect: string }>> {
  const output = await kms.client.send(new GetKeyPolicyCommand({ KeyId: keyArn, PolicyName: 'default' }));
  return (JSON.parse(output.Policy!) as { Statement: Array<{ Sid?: string; Effect: string }> }).Statement;
}

beforeAll(async () => {
  kms = await startTestKms();
  application = new KMSClient({
    endpoint: kms.emulator.url,
    region: 'us-east-1',
    credentials: { accessKeyId: 'AKIDAPPLICATION', secretAccessKey: 'test' },
    maxAttempts: 1,
  });
  keyArn = (await kms.client.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
  blob = (await kms.client.send(new EncryptCommand({ KeyId: keyArn, Plaintext: Buffer.alloc(32, 3) }))).CiphertextBlob!;
});

afterAll(async () => {
  application?.destroy();
  await kms?.close();
});

describe('key policy access', () => {
  it('starts with the default policy', async () => {
    const list = await statements();
    expect(list.length).toBe(1);
    expect(list[0]!.Effect).toBe('Allow');
  });

  it('denies application decrypt', async () => {
    await new KeyPolicyAccess(kms.client).restrictTo(keyArn, [rotationArn]);
    expect(await errorName(application.send(new DecryptCommand({ CiphertextBlob: blob })))).toBe('AccessDeniedException');
  });

  it('denies GenerateDataKey by wildcard', async () => {
    const request = new GenerateDataKeyCommand({ KeyId: keyArn, KeySpec: 'AES_256' });
    expect(await errorName(application.send(request))).toBe('AccessDeniedException');
  });

  it('leaves unlisted actions allowed', async () => {
    const request = new EncryptCommand({ KeyId: keyArn, Plaintext: Buffer.alloc(32, 4) });
    expect(await errorName(application.send(request))).toBe('resolved');
  });

  it('allows the excepted principal', async () => {
    expect(await errorName(kms.client.send(new DecryptCommand({ CiphertextBlob: blob })))).toBe('resolved');
  });

  it('replaces its statement on rerun', async () => {
    await new KeyPolicyAccess(kms.client).restrictTo(keyArn, [rotationArn]);
    const list = await statements();
    expect(list.filter((statement) => statement.Sid === denyStatementSid).length).toBe(1);
    expect(list.length).toBe(2);
  });

  it('logs the denied call', () => {
    const denied = kms.emulator.requestLog().filter((event) => event.userIdentity.accessKeyId === 'AKIDAPPLICATION' && event.errorCode === 'AccessDeniedException');
    expect(denied.map((event) => event.eventName)).toEqual(['Decrypt', 'GenerateDataKey']);
  });

  it('rejects a deny it cannot enforce', async () => {
    const policy = JSON.stringify({ Statement: [{ Effect: 'Deny', Principal: { AWS: rotationArn }, Action: 'kms:*', Resource: '*' }] });
    const request = new PutKeyPolicyCommand({ KeyId: keyArn, PolicyName: 'default', Policy: policy });
    expect(await errorName(kms.client.send(request))).toBe('MalformedPolicyDocumentException');
  });

  it('rejects another policy name', async () => {
    const request = new GetKeyPolicyCommand({ KeyId: keyArn, PolicyName: 'other' });
    expect(await errorName(kms.client.send(request))).toBe('NotFoundException');
  });

  it('pins the stated rotation principal', async () => {
    const pinned = (await kms.client.send(new CreateKeyCommand({}))).KeyMetadata!.Arn!;
    const pinnedBlob = (await kms.client.send(new EncryptCommand({ KeyId: pinned, Plaintext: Buffer.alloc(32, 4) }))).CiphertextBlob!;
    // The principals passed in are ignored: only the stated ARN stays allowed.
    await new RotationPrincipalPolicyAccess(new KeyPolicyAccess(kms.client), rotationArn).restrictTo(pinned, ['AKIDAPPLICATION']);
    expect(await errorName(application.send(new DecryptCommand({ CiphertextBlob: pinnedBlob })))).toBe('AccessDeniedException');
    expect(await errorName(kms.client.send(new DecryptCommand({ CiphertextBlob: pinnedBlob })))).toBe('resolved');
  });
});
