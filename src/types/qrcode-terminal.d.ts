// qrcode-terminal ships no type definitions; this is the part mailgate uses.
declare module 'qrcode-terminal' {
  interface Options {
    small?: boolean;
  }
  export function generate(text: string, options: Options, callback: (qr: string) => void): void;
  export function setErrorLevel(level: 'L' | 'M' | 'Q' | 'H'): void;
}
