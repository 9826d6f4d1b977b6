import './base.css';
import './owner.css';
