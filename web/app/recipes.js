// Compression recipes the CLI compresses on the fly (`refusal-lens compress --help`): the
// choices the Compare, Repair and Playground pages offer.
export const RECIPES = ['rtn:8:128', 'rtn:4:128', 'gguf:q4_0', 'gptq:4:128', 'wanda:0.5', 'wanda:2:4', 'sparsegpt:0.5', 'magnitude:0.5'];
