/** Changes who may use a KMS key. */
export interface KeyAccessControl {
  /** Allows only `principals` to use the key from now on; every other caller gets AccessDeniedException. */
  restrictTo(keyArn: string, principals: string[]): Promise<void>;
}

/**
 * Sets a key's access list on the rewrap KMS emulator through its
 * `PUT /_emulator/key-access` extension. Principals are access key ids.
 */
export class EmulatorKeyAccess implements KeyAccessControl {
  constructor(private readonly endpoint: string) {}

  async restrictTo(keyArn: string, principals: string[]): Promise<void> {
    const response = await fetch(new URL('/_emulator/key-access', this.endpoint), {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ KeyId: keyArn, Principals: principals }),
    });
    if (!response.ok) {
      throw new Error(`KMS emulator at ${this.endpoint} returned HTTP ${response.status} for PUT /_emulator/key-access for ${keyArn}; is it a rewrap KMS emulator?`);
    }
  }
}

/**
 * NOTE: not implemented, so `emergency` against AWS KMS fails at its first step.
 * The AWS version needs GetKeyPolicy, then PutKeyPolicy with a Deny of
 * kms:Decrypt, kms:ReEncryptFrom, kms:Encrypt and kms:GenerateDataKey* under
 * a `StringNotEquals aws:PrincipalArn` condition naming the rotation role.
 * It also needs ListGrants and RevokeGrant for every grant to an application
 * principal. The rotation role then needs kms:GetKeyPolicy, kms:PutKeyPolicy,
 * kms:ListGrants and kms:RevokeGrant, and principals are role ARNs, not access key ids.
 */
export class AwsKeyAccess implements KeyAccessControl {
  restrictTo(keyArn: string): Promise<void> {
    return Promise.reject(
      new Error(`revoking application access to ${keyArn} is implemented for the rewrap KMS emulator only; deny every principal except the rotation role in the key policy by hand`),
    );
  }
}
