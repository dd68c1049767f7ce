-- graphres lsp in Neovim 0.7 (the configuration of docs/editor-neovim.txt):
--   nvim -u docs/editor-neovim.lua specs/resnet18.yaml
-- On Neovim 0.8 or later, vim.lsp.start({...}) does the start-and-attach in one call (docs/editor.md).
vim.o.signcolumn = "yes"
vim.o.updatetime = 300
vim.o.completeopt = "menuone,noinsert"
-- readable floats and dimmed code lenses in a 256-colour terminal
vim.cmd("highlight NormalFloat ctermbg=236 ctermfg=252")
vim.cmd("highlight Pmenu ctermbg=236 ctermfg=252")
vim.cmd("highlight PmenuSel ctermbg=24 ctermfg=255")
vim.cmd("highlight LspCodeLens ctermfg=108")
vim.cmd("highlight SignColumn ctermbg=235")
local python = os.getenv("GRAPHRES_PYTHON") or "python"
local client_id = nil

vim.api.nvim_create_autocmd("FileType", {
  pattern = "yaml",
  callback = function(args)
    if client_id == nil then
      client_id = vim.lsp.start_client({
        name = "graphres",
        cmd = { python, "-m", "graphres", "lsp" },
        root_dir = vim.fn.getcwd(),
        on_attach = function(_, bufnr)
          -- the stage table as code lenses (shown at the end of each stage's line in Neovim 0.7);
          -- refreshed only once the server is up, so that no request goes unanswered
          vim.api.nvim_create_autocmd({ "BufEnter", "CursorHold", "InsertLeave", "TextChanged" }, {
            buffer = bufnr,
            callback = function() vim.lsp.codelens.refresh() end,
          })
          vim.lsp.codelens.refresh()
        end,
      })
    end
    vim.lsp.buf_attach_client(args.buf, client_id)
    vim.bo[args.buf].omnifunc = "v:lua.vim.lsp.omnifunc"
  end,
})

vim.keymap.set("n", "K", vim.lsp.buf.hover)
vim.keymap.set("n", "gd", vim.lsp.buf.definition)
