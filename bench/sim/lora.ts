import { SimHttpError } from './openai.js';

/** One adapter as vLLM's LoRARequest knows it: the name clients send, its int id, and where it came from. */
export interface SimLora {
  readonly name: string;
  readonly id: number;
  readonly path: string;
}

/**
 * The adapters loaded at runtime (vLLM with VLLM_ALLOW_RUNTIME_LORA_UPDATING).
 * Loading only records the adapter: the simulator has no weights, but the
 * adapter still changes what the engine caches (its name is part of every
 * block's hash), which is all routing can observe.
 */
export class SimLoras {
  readonly #byName = new Map<string, SimLora>();
  /** vLLM numbers adapters from 1 in load order and never reuses an id. */
  #nextId = 1;

  get(name: string): SimLora | undefined {
    return this.#byName.get(name);
  }

  get all(): readonly SimLora[] {
    return [...this.#byName.values()];
  }

  /** `POST /v1/load_lora_adapter`: vLLM's checks and messages (400 for a missing field or a name already loaded). */
  load(body: Record<string, unknown>, baseModel: string): string {
    const name = body.lora_name;
    const path = body.lora_path;
    if (typeof name !== 'string' || name === '' || typeof path !== 'string' || path === '')
      throw new SimHttpError(400, "Both 'lora_name' and 'lora_path' must be provided.", 'InvalidUserInput');
    if (name === baseModel || this.#byName.has(name))
      throw new SimHttpError(400, `The lora adapter '${name}' has already been loaded.`, 'InvalidUserInput');
    this.#byName.set(name, { name, id: this.#nextId++, path });
    return `Success: LoRA adapter '${name}' added successfully.`;
  }

  /** `POST /v1/unload_lora_adapter`: 400 without a name, 404 for one not loaded. */
  unload(body: Record<string, unknown>): string {
    const name = body.lora_name;
    if (typeof name !== 'string' || name === '')
      throw new SimHttpError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", 'InvalidUserInput');
    if (!this.#byName.delete(name))
      throw new SimHttpError(404, `The lora adapter '${name}' cannot be found.`, 'NotFoundError');
    return `Success: LoRA adapter '${name}' removed successfully.`;
  }

  /** The adapters' model cards, as vLLM lists them after the base model's: `root` is the path, `parent` the base. */
  cards(baseModel: string, created: number): Record<string, unknown>[] {
    return this.all.map((l) => ({
      id: l.name,
      object: 'model',
      created,
      owned_by: 'vllm',
      root: l.path,
      parent: baseModel,
      max_model_len: null,
    }));
  }
}
