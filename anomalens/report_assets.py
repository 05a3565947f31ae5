"""The report's inline style sheet and script (no external files: the report is one HTML file).

The script renders the results table from the JSON array embedded in the page, one page of rows
at a time (so 10,000 images open in about the time of 100), with filters (all / NG / OK / no
decision / failed), sorting by column, and a viewer that shows one image, its overlay and its
mask side by side (arrow keys: previous / next; Esc: close).
"""

CSS = """
:root{--ok:#1b7f3b;--ng:#c62828;--na:#6b7280;--bg:#f6f7f9;--line:#d9dde3}
*{box-sizing:border-box}
body{margin:0;padding:24px;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
 color:#1f2328;background:var(--bg)}
h1{margin:0 0 4px;font-size:22px}h2{font-size:17px;margin:0 0 10px}
.meta{color:var(--na);margin:0}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-top:16px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:12px}
.card{min-width:110px;padding:10px 14px;border-radius:8px;border:1px solid var(--line);background:#fafbfc}
.card .n{font-size:26px;font-weight:600;display:block}
.card.ok .n{color:var(--ok)}.card.ng .n{color:var(--ng)}.card.failed .n{color:var(--na)}
dl.info{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}
dl.info dt{color:var(--na)}dl.info dd{margin:0}
pre.settings{max-height:320px;overflow:auto;background:#f6f8fa;padding:8px;border-radius:6px;font-size:12px}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:middle}
th{position:sticky;top:0;background:#eef0f3;white-space:nowrap;user-select:none;z-index:1}
th[data-key]{cursor:pointer}th[data-key]:hover{background:#e2e6ea}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.path{font-family:ui-monospace,Consolas,monospace;font-size:12px;word-break:break-all;max-width:380px}
td img{display:block;border-radius:3px;cursor:zoom-in;background:#eee}
.badge{display:inline-block;padding:2px 9px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}
.badge.ok{background:var(--ok)}.badge.ng{background:var(--ng)}.badge.na{background:var(--na)}
.badge.failed{background:#374151}
.missing{color:var(--na);font-style:italic}
.sim{color:var(--na)}.err{color:var(--ng)}
.miss{outline:2px solid #f59e0b;outline-offset:-2px}
.toolbar{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin-bottom:10px}
.toolbar button{border:1px solid var(--line);background:#fff;border-radius:16px;padding:4px 12px;cursor:pointer;font:inherit}
.toolbar button[aria-pressed=true]{background:#1f2328;color:#fff;border-color:#1f2328}
.pager{display:flex;gap:8px;align-items:center;margin:10px 0}
.pager button{font:inherit;padding:3px 10px}
.refs{display:flex;gap:8px;flex-wrap:wrap}.refs figure{margin:0;font-size:11px;color:var(--na);max-width:120px;word-break:break-all}
.refs img{display:block;border-radius:3px}
dialog#viewer{width:min(96vw,1500px);max-height:94vh;border:none;border-radius:10px;padding:16px 20px}
dialog#viewer::backdrop{background:rgba(0,0,0,.6)}
#viewer .panes{display:flex;gap:12px;align-items:flex-start;overflow:auto}
#viewer figure{margin:0;flex:1;min-width:0}#viewer figcaption{color:var(--na);font-size:12px;margin-bottom:4px}
#viewer figure img{width:100%;height:auto;max-height:72vh;object-fit:contain;background:#111;border-radius:4px}
#viewer .head{display:flex;justify-content:space-between;gap:12px;align-items:baseline;margin-bottom:10px}
#viewer .head button{font:inherit}
svg text{font:11px system-ui,sans-serif;fill:#444}
"""

# DATA: rows of the results table (see report.py `_row` for the keys). Rendering is by page; the
# <img> elements carry loading="lazy" so even a long page decodes only what is on screen.
JS = """
(function(){
  var DATA=JSON.parse(document.getElementById('report-data').textContent);
  var table=document.getElementById('results-table'),body=table.tBodies[0];
  var hasTruth=table.getAttribute('data-truth')==='1';
  var state={filter:'all',key:'score',dir:'descending',page:0,size:+table.getAttribute('data-page-size')||100};
  var view=[];
  function esc(s){return String(s==null?'':s).replace(/[&<>"']/g,function(c){
    return {'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'}[c];});}
  function fmt(v){if(v==null)return '';var a=Math.abs(v);
    return (a!==0&&(a<1e-3||a>=1e5))?v.toExponential(3):(+v.toPrecision(4)).toString();}
  function kind(r){return r.st!=='ok'?'failed':r.d==='NG'?'NG':r.d==='OK'?'OK':'none';}
  function matches(r){return state.filter==='all'||kind(r)===state.filter;}
  function cmp(a,b){var k=state.key,x=a[k],y=b[k],r=0;
    if(x==null&&y!=null)return 1;if(y==null&&x!=null)return -1;
    if(x!=null&&y!=null){r=(typeof x==='number')?(x<y?-1:x>y?1:0):String(x).localeCompare(String(y),undefined,{numeric:true});}
    return r!==0?(state.dir==='ascending'?r:-r):(a.i-b.i);}
  function img(uri,w,h,alt,idx){
    if(!uri)return '<span class="missing">not available</span>';
    return '<img loading="lazy" decoding="async" src="'+uri+'" width="'+w+'" height="'+h+'" alt="'+alt+'" data-open="'+idx+'">';}
  function rowHtml(r,idx){
    var k=kind(r),badge={NG:'ng',OK:'ok',none:'na',failed:'failed'}[k];
    var label=k==='none'?'n/a':k==='failed'?'failed':k;
    var desc=r.st!=='ok'?'<span class="err">'+esc(r.e||'unknown error')+'</span>':
      (r.t?esc(r.t)+' <span class="sim">('+fmt(r.ts)+')</span>':'');
    var truth=hasTruth?'<td>'+esc(r.g||'')+'</td>':'';
    return '<tr class="'+badge+(r.miss?' miss':'')+'" data-index="'+idx+'"><td class="num">'+r.i+'</td>'+
      '<td>'+img(r.im,r.w,r.h,'image',idx)+'</td><td>'+img(r.ov,r.ow,r.oh,'overlay',idx)+'</td>'+
      '<td class="path">'+esc(r.p)+'</td><td class="num">'+fmt(r.score)+'</td>'+
      '<td><span class="badge '+badge+'">'+label+'</span></td>'+truth+'<td>'+desc+'</td></tr>';}
  function refresh(){view=DATA.filter(matches).sort(cmp);state.page=Math.min(state.page,Math.max(0,pages()-1));render();}
  function pages(){return Math.max(1,Math.ceil(view.length/state.size));}
  function render(){
    var start=state.page*state.size,rows=view.slice(start,start+state.size),html=[];
    for(var j=0;j<rows.length;j++){html.push(rowHtml(rows[j],start+j));}
    body.innerHTML=html.join('');
    var info=view.length?('rows '+(start+1)+'-'+(start+rows.length)+' of '+view.length):'no rows';
    Array.prototype.forEach.call(document.querySelectorAll('.page-info'),function(e){
      e.textContent='Page '+(state.page+1)+' of '+pages()+' ('+info+')';});
    Array.prototype.forEach.call(document.querySelectorAll('.pager [data-step]'),function(b){
      var s=+b.getAttribute('data-step');b.disabled=(s<0&&state.page===0)||(s>0&&state.page>=pages()-1);});}
  // Filters, with their counts.
  var counts={all:DATA.length,NG:0,OK:0,none:0,failed:0};
  DATA.forEach(function(r){counts[kind(r)]++;});
  Array.prototype.forEach.call(document.querySelectorAll('#filters button'),function(b){
    var f=b.getAttribute('data-filter');b.querySelector('.count').textContent=counts[f];
    if(f!=='all'&&!counts[f]&&f!=='failed'&&f!=='NG'&&f!=='OK'){b.hidden=true;}
    b.addEventListener('click',function(){state.filter=f;state.page=0;
      Array.prototype.forEach.call(document.querySelectorAll('#filters button'),function(o){
        o.setAttribute('aria-pressed',o===b?'true':'false');});refresh();});});
  // Sorting by column header; the first click sorts in the header's data-first direction.
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
    if(!th.hasAttribute('data-key'))return;
    th.addEventListener('click',function(){
      var cur=th.getAttribute('aria-sort');
      state.dir=cur==='ascending'?'descending':cur==='descending'?'ascending':(th.getAttribute('data-first')||'ascending');
      state.key=th.getAttribute('data-key');state.page=0;
      Array.prototype.forEach.call(th.parentNode.cells,function(h){h.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',state.dir);refresh();});});
  Array.prototype.forEach.call(document.querySelectorAll('.pager [data-step]'),function(b){
    b.addEventListener('click',function(){state.page=Math.max(0,Math.min(pages()-1,state.page+(+b.getAttribute('data-step'))));
      render();table.scrollIntoView();});});
  // The viewer: the run's full-size files when they are beside the report, else the thumbnails.
  var dlg=document.getElementById('viewer'),current=-1;
  function pane(title,full,thumb){
    if(!full&&!thumb)return '<figure><figcaption>'+title+'</figcaption><span class="missing">not available</span></figure>';
    var fb=thumb?' onerror="this.onerror=null;this.src=\\''+thumb+'\\'"':'';
    return '<figure><figcaption>'+title+'</figcaption><img alt="'+title+'" src="'+esc(full||thumb)+'"'+fb+'></figure>';}
  function open(idx){
    var r=view[idx];if(!r)return;current=idx;
    var head='<div class="head"><div><b>'+esc(r.p)+'</b><br>score '+fmt(r.score)+' &middot; '+
      (kind(r)==='none'?'no decision':kind(r))+(r.g?' &middot; truth: '+esc(r.g):'')+
      (r.st!=='ok'?' &middot; <span class="err">'+esc(r.e||'')+'</span>':'')+'</div>'+
      '<div><button data-go="-1">&larr; previous</button> <button data-go="1">next &rarr;</button> '+
      '<button data-close>close</button></div></div>';
    var panes=pane('image',r.fi,r.im)+pane('overlay',r.fo,r.ov)+pane('mask',r.fm,r.mk);
    if(hasTruth)panes+=pane('ground truth mask',r.fg,r.gk);
    dlg.innerHTML=head+'<div class="panes">'+panes+'</div>';
    if(!dlg.open){dlg.showModal();}}
  function go(step){var n=current+step;if(n<0||n>=view.length)return;
    var p=Math.floor(n/state.size);if(p!==state.page){state.page=p;render();}open(n);}
  body.addEventListener('click',function(e){var t=e.target.closest('[data-open]');if(t)open(+t.getAttribute('data-open'));});
  dlg.addEventListener('click',function(e){
    if(e.target===dlg||e.target.hasAttribute('data-close')){dlg.close();return;}
    var g=e.target.getAttribute('data-go');if(g)go(+g);});
  document.addEventListener('keydown',function(e){if(!dlg.open)return;
    if(e.key==='ArrowRight')go(1);else if(e.key==='ArrowLeft')go(-1);});
  refresh();
  document.body.setAttribute('data-ready','1');
})();
"""
