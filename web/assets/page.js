// The page works without this script; it only adds the copy buttons.
document.documentElement.classList.add('js');
document.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-copy], button[data-copy-list]');
  if (!button) return;
  const text = button.dataset.copy
    ? document.querySelector(button.dataset.copy).textContent.trim()
    : [...document.querySelectorAll(button.dataset.copyList)].map((node) => node.textContent.trim()).join('\n');
  navigator.clipboard.writeText(text).then(
    () => {
      const status = document.querySelector('.copied');
      if (status) status.textContent = 'Copied';
    },
    () => undefined,
  );
});
