// ESLint with type information: typescript-eslint's type-checked rules over every TypeScript file,
// tests included. Formatting is Prettier's job (`npm run format`), not the linter's.
import eslint from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'bench/results/', '.tap/', 'eslint.config.js'] },
  eslint.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { project: './tsconfig.typecheck.json', tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // Unused arguments keep a callback's documented shape; an underscore says it is deliberate.
      '@typescript-eslint/no-unused-vars': [
        'error',
        { argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrors: 'none' },
      ],
      // tap queues and awaits its own subtests; every other promise must still be handled.
      '@typescript-eslint/no-floating-promises': [
        'error',
        { allowForKnownSafeCalls: [{ from: 'package', name: 'test', package: '@tapjs/test' }] },
      ],
      // Async methods here often implement a promise-returning interface (start/stop, handlers) without
      // awaiting anything; no-floating-promises and no-misused-promises catch the real hazards.
      '@typescript-eslint/require-await': 'off',
      // Error messages echo untrusted input with String(); '[object Object]' is an acceptable echo there.
      '@typescript-eslint/no-base-to-string': 'off',
      // prom-client calls collect() with `this` bound to the metric, so the outer object is `self`.
      '@typescript-eslint/no-this-alias': ['error', { allowedNames: ['self'] }],
      // One private-field style: ECMAScript `#field`, private at run time too (a private constructor stays).
      'no-restricted-syntax': [
        'error',
        {
          selector:
            "PropertyDefinition[accessibility='private'], MethodDefinition[accessibility='private'][kind!='constructor'], TSParameterProperty[accessibility='private']",
          message: 'Use an ECMAScript #private member, not the TypeScript `private` keyword.',
        },
      ],
    },
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // Tests assert on parsed JSON (`any` from JSON.parse and body.json()); the assertion is the check.
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      // Fakes hand out methods as spies and callbacks on purpose.
      '@typescript-eslint/unbound-method': 'off',
    },
  },
  {
    // Plain JavaScript (CI helpers) is outside the TypeScript project: lint it without type information.
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: { process: 'readonly', console: 'readonly' } },
  },
);
